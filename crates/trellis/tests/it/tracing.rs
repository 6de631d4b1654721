//! Distributed tracing across real sidecars, exported over OTLP to a receiver that decodes
//! the protocol's own messages: one trace followed from an HTTP call through invocation,
//! the callee app's state save and publish, to the subscriber's delivery, every span the
//! child of the one before it. And `isSecure: true`: spans over TLS to a collector whose CA
//! `SSL_CERT_FILE` names, and nothing (but counted failures) to one that is not trusted.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use trellis_test_support::{OtlpReceiver, ReceivedSpan, SubscriberApp, TestCa, request};

use crate::{PATIENCE, sidecar};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// A Configuration exporting every trace to `receiver` over OTLP/`protocol`.
fn tracing_config(dir: &std::path::Path, receiver: &OtlpReceiver, protocol: &str) -> String {
    otel_config(dir, receiver, protocol, false)
}

/// As [`tracing_config`], with `isSecure: secure`.
fn otel_config(
    dir: &std::path::Path,
    receiver: &OtlpReceiver,
    protocol: &str,
    secure: bool,
) -> String {
    let endpoint = match protocol {
        "grpc" => receiver.grpc_addr,
        _ => receiver.http_addr,
    };
    let path = dir.join(format!("tracing-{protocol}-{secure}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: tracing\n\
             spec:\n  tracing:\n    samplingRate: \"1\"\n    otel:\n      endpointAddress: \
             \"{endpoint}\"\n      isSecure: {secure}\n      protocol: {protocol}\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// The callee app: `POST /work` saves state and publishes through its own sidecar (whose
/// URL goes into the cell once it is known), passing on the `traceparent` it was called
/// with, as an instrumented app does.
async fn worker_app() -> (u16, Arc<OnceLock<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sidecar: Arc<OnceLock<String>> = Arc::default();
    let base = sidecar.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let base = base.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let base = base.clone();
                    async move {
                        let base = base.get().cloned().unwrap_or_default();
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        if req.uri().path() == "/work" {
                            let headers = [
                                ("traceparent", tp.as_str()),
                                ("content-type", "application/json"),
                            ];
                            let saved = request(
                                "POST",
                                &format!("{base}/v1.0/state/statestore"),
                                &headers,
                                r#"[{"key": "order-1", "value": {"n": 1}}]"#,
                            )
                            .await;
                            let published = request(
                                "POST",
                                &format!("{base}/v1.0/publish/pubsub/orders"),
                                &headers,
                                r#"{"order": 1}"#,
                            )
                            .await;
                            let body =
                                format!("{} {}", saved.status.as_u16(), published.status.as_u16());
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                body,
                            ))));
                        }
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        *resp.status_mut() = http::StatusCode::NOT_FOUND;
                        Ok(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, sidecar)
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name} in {spans:#?}");
    found[0]
}

/// `GET /v1.0/metadata` on `sidecar` (app `app_id`) as the caller's child, and the server
/// span `receiver` gets for it.
async fn traced_metadata_call(
    sidecar: &trellis_test_support::Sidecar,
    receiver: &OtlpReceiver,
    app_id: &str,
) -> ReceivedSpan {
    let r = request(
        "GET",
        &sidecar.url("/v1.0/metadata"),
        &[("traceparent", CALLER)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let spans = receiver
        .wait_for(PATIENCE, |s| {
            s.iter().any(|s| s.name == "GET /v1.0/metadata")
        })
        .await;
    one(&spans, app_id, "GET /v1.0/metadata").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_a_call_through_state_and_pubsub_to_the_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start().await;
    let config = tracing_config(dir.path(), &receiver, "grpc");
    let subscriber = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    let c = sidecar("trace-c", dir.path())
        .app_port(subscriber.port())
        .arg("--config")
        .arg(&config)
        .spawn();
    let (worker, worker_sidecar) = worker_app().await;
    let b = sidecar("trace-b", dir.path())
        .app_port(worker)
        .arg("--config")
        .arg(&config)
        .spawn();
    worker_sidecar.set(b.url("")).unwrap();
    let a = sidecar("trace-a", dir.path())
        .arg("--config")
        .arg(&config)
        .spawn();
    for s in [&a, &b, &c] {
        s.wait_healthy().await;
    }

    let r = request(
        "POST",
        &a.url("/v1.0/invoke/trace-b/method/work"),
        &[("traceparent", CALLER)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), b.output());
    assert_eq!(r.text(), "204 204");
    let delivered = subscriber.wait_for("/orders", 1, PATIENCE).await;
    assert_eq!(delivered.len(), 1, "{}", c.output());

    let spans = receiver
        .wait_for(PATIENCE, |s| {
            s.iter().any(|s| s.name == "deliver orders")
                && s.iter().filter(|s| s.trace_id == TRACE).count() >= 7
        })
        .await;
    let ours: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    let api = one(&ours, "trace-a", "POST /v1.0/invoke/{id}/method/{method}");
    assert_eq!(api.kind, 2, "server");
    assert_eq!(
        api.parent_id.as_deref(),
        Some("b7ad6b7169203331"),
        "the caller's span"
    );
    assert_eq!(api.attributes["http.response.status_code"], "200");
    let local = one(&ours, "trace-b", "CallLocal/trace-b");
    assert_eq!(
        local.parent_id.as_ref(),
        Some(&api.span_id),
        "invocation hop"
    );
    assert_eq!(local.attributes["rpc.method"], "/work");
    let save_api = one(&ours, "trace-b", "POST /v1.0/state/{store}");
    assert_eq!(
        save_api.parent_id.as_ref(),
        Some(&local.span_id),
        "the app's own call"
    );
    let save = one(&ours, "trace-b", "state/save");
    assert_eq!(save.kind, 3, "client");
    assert_eq!(save.parent_id.as_ref(), Some(&save_api.span_id));
    assert_eq!(save.attributes["trellis.component"], "statestore");
    let publish_api = one(&ours, "trace-b", "POST /v1.0/publish/{pubsub}/{*topic}");
    assert_eq!(publish_api.parent_id.as_ref(), Some(&local.span_id));
    let produce = one(&ours, "trace-b", "publish orders");
    assert_eq!(produce.kind, 4, "producer");
    assert_eq!(produce.parent_id.as_ref(), Some(&publish_api.span_id));
    let deliver = one(&ours, "trace-c", "deliver orders");
    assert_eq!(deliver.kind, 5, "consumer");
    assert_eq!(
        deliver.parent_id.as_ref(),
        Some(&produce.span_id),
        "across the broker"
    );
    // The subscriber is handed the delivery's span as its parent, in the header and the event.
    let got = &delivered[0];
    let header = got.headers["traceparent"].to_str().unwrap();
    assert_eq!(header, format!("00-{TRACE}-{}-01", deliver.span_id));
    assert_eq!(
        got.json()["traceid"].as_str().unwrap().split('-').nth(1),
        Some(TRACE)
    );
    assert_eq!(
        got.json()["traceparent"]
            .as_str()
            .unwrap()
            .split('-')
            .nth(2),
        Some(produce.span_id.as_str())
    );

    // A call without a traceparent starts a trace of its own at the sidecar.
    let r = request("GET", &a.url("/v1.0/metadata"), &[], "").await;
    assert_eq!(r.status, 200);
    let spans = receiver
        .wait_for(PATIENCE, |s| {
            s.iter().any(|s| s.name == "GET /v1.0/metadata")
        })
        .await;
    let root = one(&spans, "trace-a", "GET /v1.0/metadata");
    assert!(
        spans.iter().all(|s| !s.name.contains("healthz")),
        "health probes are not traced"
    );
    assert_eq!(root.parent_id, None);
    assert_ne!(root.trace_id, TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_and_sampling_zero_still_propagate() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start().await;
    let config = tracing_config(dir.path(), &receiver, "http");
    let a = sidecar("trace-http", dir.path())
        .arg("--config")
        .arg(&config)
        .spawn();
    a.wait_healthy().await;
    let span = traced_metadata_call(&a, &receiver, "trace-http").await;
    assert_eq!(span.trace_id, TRACE);
    assert_eq!(span.via, "http");
    // What became of the spans is on the sidecar's metrics.
    let md = request("GET", &a.url("/v1.0/metadata"), &[], "")
        .await
        .json();
    let port = md["extended"]["metricsPort"].as_str().unwrap().to_string();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async { request("GET", &metrics, &[], "").await.text() };
    let outcome = |text: &str, outcome: &str| {
        let samples = trellis_test_support::exposition::parse(text);
        trellis_test_support::exposition::sum(
            &samples,
            "trellis_trace_spans_total",
            &[("outcome", outcome)],
        )
    };
    // The tracer counts a batch once the collector has answered its export.
    let counted = trellis_test_support::wait_until(PATIENCE, || async {
        outcome(&scrape().await, "exported") >= 1.0
    })
    .await;
    let text = scrape().await;
    assert!(counted, "{text}");
    assert_eq!(outcome(&text, "dropped"), 0.0, "{text}");

    // samplingRate "0": nothing is exported, but an invoked app still gets the trace id
    // (not sampled) so that its own spans, if any, join the caller's trace.
    let zero = dir.path().join("zero.yaml");
    std::fs::write(
        &zero,
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: zero\n\
             spec:\n  tracing:\n    samplingRate: \"0\"\n    otel:\n      endpointAddress: \
             \"{}\"\n      protocol: grpc\n",
            receiver.grpc_addr
        ),
    )
    .unwrap();
    let echo = trellis_test_support::TestApp::start("echo").await;
    let b = sidecar("trace-zero-b", dir.path())
        .app_port(echo.port())
        .arg("--config")
        .arg(zero.display().to_string())
        .spawn();
    let c = sidecar("trace-zero-a", dir.path())
        .arg("--config")
        .arg(zero.display().to_string())
        .spawn();
    b.wait_healthy().await;
    c.wait_healthy().await;
    let unsampled = CALLER.replace("-01", "-00");
    let r = request(
        "POST",
        &c.url("/v1.0/invoke/trace-zero-b/method/echo"),
        &[("traceparent", unsampled.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        seen.starts_with(&format!("00-{TRACE}-")) && seen.ends_with("-00"),
        "{seen}"
    );
    assert_ne!(seen, unsampled, "each hop is a span of its own");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| !s.service.starts_with("trace-zero")),
        "unsampled spans were exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_invocation_carries_the_trace_to_the_callee() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start().await;
    let config = tracing_config(dir.path(), &receiver, "grpc");
    let echo = trellis_test_support::TestApp::start("echo").await;
    let b = sidecar("trace-grpc-b", dir.path())
        .app_port(echo.port())
        .arg("--config")
        .arg(&config)
        .spawn();
    let a = sidecar("trace-grpc-a", dir.path())
        .arg("--config")
        .arg(&config)
        .spawn();
    a.wait_healthy().await;
    b.wait_healthy().await;
    let endpoint = format!("http://127.0.0.1:{}", a.grpc_port);
    let mut client = trellis_proto::runtime::dapr_client::DaprClient::connect(endpoint)
        .await
        .unwrap();
    let mut call = tonic::Request::new(trellis_proto::runtime::InvokeServiceRequest {
        id: "trace-grpc-b".into(),
        message: Some(trellis_proto::common::InvokeRequest {
            method: "echo".into(),
            http_extension: Some(trellis_proto::common::HttpExtension {
                verb: trellis_proto::common::http_extension::Verb::Post as i32,
                querystring: String::new(),
            }),
            ..Default::default()
        }),
    });
    call.metadata_mut()
        .insert("traceparent", CALLER.parse().unwrap());
    let answer = client.invoke_service(call).await.unwrap().into_inner();
    let echoed: serde_json::Value =
        serde_json::from_slice(&answer.data.unwrap_or_default().value).unwrap();
    let seen = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_string();

    let spans = receiver
        .wait_for(PATIENCE, |s| {
            s.iter().any(|s| s.name == "CallLocal/trace-grpc-b")
                && s.iter().any(|s| s.name.ends_with("/InvokeService"))
        })
        .await;
    let api = one(
        &spans,
        "trace-grpc-a",
        "/dapr.proto.runtime.v1.Dapr/InvokeService",
    );
    assert_eq!(api.trace_id, TRACE);
    assert_eq!(api.parent_id.as_deref(), Some("b7ad6b7169203331"));
    let local = one(&spans, "trace-grpc-b", "CallLocal/trace-grpc-b");
    assert_eq!(local.parent_id.as_ref(), Some(&api.span_id));
    assert_eq!(
        seen,
        format!("00-{TRACE}-{}-01", local.span_id),
        "what the app saw"
    );
}

/// `trellis_trace_spans_total{outcome}` as `sidecar`'s metrics endpoint has it now.
async fn spans_counted(sidecar: &trellis_test_support::Sidecar, outcome: &str) -> f64 {
    let md = request("GET", &sidecar.url("/v1.0/metadata"), &[], "")
        .await
        .json();
    let port = md["extended"]["metricsPort"].as_str().unwrap().to_string();
    let text = request("GET", &format!("http://127.0.0.1:{port}/metrics"), &[], "")
        .await
        .text();
    let samples = trellis_test_support::exposition::parse(&text);
    trellis_test_support::exposition::sum(
        &samples,
        "trellis_trace_spans_total",
        &[("outcome", outcome)],
    )
}

/// With `isSecure: true`, spans reach a collector over TLS whose certificate a private CA
/// signed, trusted through `SSL_CERT_FILE`, and decode there.
async fn otlp_over_tls_delivers(protocol: &str, app_id: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&["127.0.0.1"]);
    let receiver = OtlpReceiver::start_tls(&ca).await;
    let config = otel_config(dir.path(), &receiver, protocol, true);
    let a = sidecar(app_id, dir.path())
        .arg("--config")
        .arg(&config)
        .env("SSL_CERT_FILE", &ca.ca_file().display().to_string())
        .spawn();
    a.wait_healthy().await;
    let span = traced_metadata_call(&a, &receiver, app_id).await;
    assert_eq!(span.trace_id, TRACE, "{}", a.output());
    assert_eq!(span.parent_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(span.via, protocol);
    assert_eq!(receiver.failed_handshakes(), 0);
    let exported = trellis_test_support::wait_until(PATIENCE, || async {
        spans_counted(&a, "exported").await >= 1.0
    })
    .await;
    assert!(exported, "{}", a.output());
    assert_eq!(spans_counted(&a, "failed").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_over_tls_trusts_the_ca_in_ssl_cert_file() {
    otlp_over_tls_delivers("grpc", "trace-tls-grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_over_tls_trusts_the_ca_in_ssl_cert_file() {
    otlp_over_tls_delivers("http", "trace-tls-http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_collector_gets_nothing_and_requests_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&["127.0.0.1"]);
    let receiver = OtlpReceiver::start_tls(&ca).await;
    // The sidecar trusts another CA only: the collector's certificate has an unknown issuer.
    let stranger = TestCa::new(&["127.0.0.1"]);
    let config = otel_config(dir.path(), &receiver, "grpc", true);
    let a = sidecar("trace-tls-untrusted", dir.path())
        .arg("--config")
        .arg(&config)
        .env("SSL_CERT_FILE", &stranger.ca_file().display().to_string())
        .spawn();
    a.wait_healthy().await;
    // Several batches (one per flush interval, 500 ms) fail, while every call succeeds.
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let r = request(
            "POST",
            &a.url("/v1.0/state/statestore"),
            &[("content-type", "application/json")],
            r#"[{"key": "k", "value": 1}]"#,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the call waited"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let failed = trellis_test_support::wait_until(PATIENCE, || async {
        spans_counted(&a, "failed").await >= 4.0
    })
    .await;
    assert!(failed, "{}", a.output());
    assert_eq!(spans_counted(&a, "exported").await, 0.0);
    assert!(receiver.spans().is_empty(), "{:?}", receiver.spans());
    assert!(receiver.failed_handshakes() >= 1, "the handshake was tried");
    // One warning for the whole spell, naming the endpoint and why.
    let output = a.output();
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("span export failing"))
        .collect();
    assert_eq!(warnings.len(), 1, "{output}");
    let endpoint = format!("https://{}", receiver.grpc_addr);
    assert!(
        warnings[0].contains(&endpoint) && warnings[0].contains("UnknownIssuer"),
        "{output}"
    );
}

/// Issue 11: "resiliency events appear in the trace of the call". A retry policy's retries
/// and a timeout policy's cuts are spans under the API span of the call they happened to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resiliency_retries_and_timeouts_are_spans_of_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = OtlpReceiver::start().await;
    let config = tracing_config(dir.path(), &receiver, "grpc");
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(
        resources.join("resiliency.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: policies\nspec:\n\
         \x20 policies:\n    timeouts:\n      quick: 300ms\n    retries:\n      twice:\n\
         \x20       policy: constant\n        duration: 10ms\n        maxRetries: 2\n\
         \x20 targets:\n    apps:\n      res-b:\n        timeout: quick\n        retry: twice\n",
    )
    .unwrap();
    let app = trellis_test_support::TestApp::start("res-b").await;
    let b = sidecar("res-b", dir.path()).app_port(app.port()).spawn();
    let a = sidecar("res-a", dir.path())
        .arg("--config")
        .arg(&config)
        .arg("--resources-path")
        .arg(resources.display().to_string())
        .spawn();
    a.wait_healthy().await;
    b.wait_healthy().await;

    // Two failures, then an answer: two retries in the trace.
    const FLAKY: &str = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = request(
        "POST",
        &a.url("/v1.0/invoke/res-b/method/flaky/2/t"),
        &[("traceparent", FLAKY)],
        "x",
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), a.output());
    // A callee slower than the timeout: every attempt is cut, and retried while allowed.
    const SLOW: &str = "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = request(
        "POST",
        &a.url("/v1.0/invoke/res-b/method/slow/5000"),
        &[("traceparent", SLOW)],
        "x",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());

    let spans = receiver
        .wait_for(PATIENCE, |s| {
            s.iter().filter(|s| s.name == "resiliency/timeout").count() >= 3
                && s.iter().filter(|s| s.name == "resiliency/retry").count() >= 4
        })
        .await;
    let api_span = |trace: &str| {
        let api: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == trace && s.service == "res-a" && s.kind == 2)
            .collect();
        assert_eq!(api.len(), 1, "{spans:#?}");
        api[0].span_id.clone()
    };
    let events = |trace: &str, name: &str| -> Vec<&ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace && s.name == name)
            .collect()
    };

    let flaky = &FLAKY[3..35];
    let parent = api_span(flaky);
    let retries = events(flaky, "resiliency/retry");
    assert_eq!(retries.len(), 2, "{spans:#?}");
    let mut attempts: Vec<&str> = retries
        .iter()
        .map(|s| s.attributes["trellis.resiliency.attempt"].as_str())
        .collect();
    attempts.sort_unstable();
    assert_eq!(attempts, ["1", "2"]);
    for s in &retries {
        assert_eq!(s.parent_id.as_ref(), Some(&parent), "under the API span");
        assert_eq!(s.attributes["trellis.resiliency.target"], "apps.res-b");
        assert_eq!(s.attributes["trellis.resiliency.policy"], "twice");
    }
    assert!(events(flaky, "resiliency/timeout").is_empty());

    let slow = &SLOW[3..35];
    let parent = api_span(slow);
    let cuts = events(slow, "resiliency/timeout");
    assert_eq!(cuts.len(), 3, "three attempts, each cut: {spans:#?}");
    for s in &cuts {
        assert_eq!(s.parent_id.as_ref(), Some(&parent));
        let error = s.error.as_deref().unwrap_or_default();
        assert!(error.contains("context deadline exceeded"), "{error}");
    }
    assert_eq!(events(slow, "resiliency/retry").len(), 2);
}
