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

/// A peer that takes calls and then goes silent (a machine gone, a black-holed route, a hung
/// process: sockets stay open, nothing answers, not HTTP/2 pings, not a new connection)
/// fails them once its liveness check goes unanswered, instead of holding them forever: a
/// small call (pooled HTTP/1.1, probed on a new connection) and a large one (HTTP/2, pinged).
/// Once the peer answers again, the next calls connect afresh and go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_after_an_unanswered_liveness_check() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = Arc::new(AtomicBool::new(true));
    let peer = tokio::spawn({
        let silent = silent.clone();
        async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                if silent.load(Ordering::SeqCst) {
                    // Read and drop whatever comes; answer nothing, close nothing.
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), answer)
                    .await;
                });
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = static_peers(&[("gone", port)]);
    let a = sidecar("caller", dir.path(), None, |c| {
        c.configuration = Some(config);
        c.peer_keepalive = trellis_runtime::invoke::Keepalive {
            interval: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_millis(200),
        };
    })
    .await;
    let large = bytes::Bytes::from("x".repeat(64 * 1024));
    let url = url(&a, "/v1.0/invoke/gone/method/x");
    let started = std::time::Instant::now();
    let (small, large_call) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(
            request("GET", &url, &[], ""),
            request("POST", &url, &[], large.clone())
        )
    })
    .await
    .expect("calls to a silent peer must fail, not hang");
    for r in [&small, &large_call] {
        assert_eq!(r.status, 500, "{}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_DIRECT_INVOKE");
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(100));
    silent.store(false, Ordering::SeqCst);
    for (r, what) in [
        (request("GET", &url, &[], "").await, "small"),
        (request("POST", &url, &[], large.clone()).await, "large"),
    ] {
        assert_eq!(
            r.status,
            200,
            "a new connection serves the next {what} call: {}",
            r.text()
        );
    }
    a.stop().await;
    peer.abort();
}

/// Dapr's built-in retries, with a short interval so the test stays quick.
fn quick_retries(c: &mut trellis_runtime::SidecarConfig) {
    c.builtin_retries = trellis_runtime::invoke::BuiltinRetries {
        retries: 3,
        interval: std::time::Duration::from_millis(200),
        max_interval: None,
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_app_still_starting_goes_through_once_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let port = trellis_test_support::free_port();
    let b = sidecar("late-app", dir.path(), Some(port), |_| {}).await;
    let a = sidecar("late-app-caller", dir.path(), None, quick_retries).await;
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        TestApp::start_on(port, "late").await
    });
    let r = request(
        "POST",
        &url(&a, "/v1.0/invoke/late-app/method/orders"),
        &[],
        "order 1",
    )
    .await;
    let app = late.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "order 1", "the body is sent again whole");
    assert_eq!(app.hits(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_app_registered_a_moment_later_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let a = sidecar("early-caller", dir.path(), None, quick_retries).await;
    let registry = dir.path().to_path_buf();
    let late = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let app = TestApp::start("registered-late").await;
        let b = sidecar("registered-late", &registry, Some(app.port()), |_| {}).await;
        (app, b)
    });
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/registered-late/method/x"),
        &[],
        "",
    )
    .await;
    let (app, b) = late.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-instance"), Some("registered-late"));
    assert_eq!(app.hits(), 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_app_answered_is_not_retried_and_retries_end() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("answers").await;
    let b = sidecar("answers", dir.path(), Some(app.port()), |_| {}).await;
    let a = sidecar("answers-caller", dir.path(), None, quick_retries).await;

    // The app's own 503 reached the app: once, returned as it is.
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/answers/method/status/503"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(app.hits(), 1);

    // An app that never comes: the last error after three retries, the marker not leaked.
    let started = std::time::Instant::now();
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/nobody-here/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_DIRECT_INVOKE");
    assert!(
        r.text().contains("no running instance of app"),
        "{}",
        r.text()
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "three retries 200 ms apart took {:?}",
        started.elapsed()
    );
    let port = trellis_test_support::free_port();
    let silent = sidecar("never-listens", dir.path(), Some(port), |_| {}).await;
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/never-listens/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("error invoking app channel"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("trellis-undelivered"), None);
    silent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dapr_builtin_service_retries_policy_replaces_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  \
                policies:\n    retries:\n      DaprBuiltInServiceRetries:\n        \
                policy: constant\n        duration: 1s\n        maxRetries: 0\n  targets: {}\n";
    let resources = trellis_resources::parse_str(std::path::Path::new("r.yaml"), yaml).unwrap();
    let a = sidecar("no-retries", dir.path(), None, |c| c.resources = resources).await;
    // The defaults would retry three times a second apart; maxRetries 0 fails at once.
    let started = std::time::Instant::now();
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/nobody-there/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2500),
        "no retries, yet it took {:?}",
        started.elapsed()
    );
    a.stop().await;
}

/// What a [`FakePeer`] saw: connections accepted, and the HTTP version of each request.
#[derive(Default)]
pub(crate) struct Seen {
    pub connections: std::sync::atomic::AtomicUsize,
    pub versions: std::sync::Mutex<Vec<http::Version>>,
}

impl Seen {
    pub fn versions(&self) -> Vec<http::Version> {
        self.versions.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A stand-in for a peer sidecar's internal port (HTTP/1.1 and HTTP/2, TLS when `tls` is
/// given) that answers every request 200 after `delay`, recording what it saw.
pub(crate) async fn fake_peer(
    tls: Option<trellis_mtls::TlsAcceptor>,
    delay: std::time::Duration,
) -> (u16, std::sync::Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(Seen::default());
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                seen.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let answer = hyper::service::service_fn(move |req: http::Request<_>| {
                        seen.versions.lock().unwrap().push(req.version());
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let server = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(socket);
                            let _ = server.serve_connection(io, answer).await;
                        }
                        Some(tls) => {
                            let Ok(socket) = tls.accept(socket).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(socket);
                            let _ = server.serve_connection(io, answer).await;
                        }
                    }
                });
            }
        }
    });
    (port, seen, task)
}

/// Configuration whose static resolver puts each app at 127.0.0.1 and its port.
pub(crate) fn static_peers(apps: &[(&str, u16)]) -> trellis_resources::Configuration {
    let mut yaml = String::from(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {name: c}\nspec:\n  nameResolution:\n    component: static\n    configuration:\n      apps:\n",
    );
    for (app, port) in apps {
        yaml.push_str(&format!("        {app}: [\"127.0.0.1:{port}\"]\n"));
    }
    configuration(&yaml)
}

/// Small unary calls take pooled HTTP/1.1 connections, one reused call after call; a large
/// body and gRPC go over HTTP/2; calls beyond the pool's limit at once share HTTP/2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_pool_http1_and_the_rest_multiplex_over_http2() {
    use http::Version;

    let (port, seen, peer) = fake_peer(None, std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let a = sidecar("caller", dir.path(), None, |c| {
        c.configuration = Some(static_peers(&[("peer", port)]));
    })
    .await;
    let call = url(&a, "/v1.0/invoke/peer/method/x");
    for _ in 0..5 {
        let r = request("POST", &call, &[], "small").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(seen.versions(), vec![Version::HTTP_11; 5]);
    assert_eq!(seen.connections(), 1, "one connection carried all five");
    let large = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let r = request("POST", &call, &[], large).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        "POST",
        &call,
        &[("content-type", "application/grpc")],
        "\0\0\0\0\0",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen.versions()[5..], [Version::HTTP_2, Version::HTTP_2]);
    assert_eq!(seen.connections(), 2, "one HTTP/2 connection for both");
    a.stop().await;
    peer.abort();

    // A slow peer and more calls at once than the pool opens connections for.
    let (port, seen, peer) = fake_peer(None, std::time::Duration::from_millis(300)).await;
    let a = sidecar("caller2", dir.path(), None, |c| {
        c.configuration = Some(static_peers(&[("peer", port)]));
    })
    .await;
    let call = url(&a, "/v1.0/invoke/peer/method/x");
    let calls = (0..40).map(|_| request("POST", &call, &[], "small"));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let versions = seen.versions();
    let http1 = versions.iter().filter(|v| **v == Version::HTTP_11).count();
    assert_eq!(http1, 32, "{versions:?}");
    assert_eq!(versions.len() - http1, 8, "{versions:?}");
    assert_eq!(seen.connections(), 33);
    a.stop().await;
    peer.abort();
}

/// A peer that closes each HTTP/1.1 connection after one answer (as a restarted sidecar's
/// old connections close): the next call finds its pooled connection gone and takes a new
/// one, so every call gets through, once. Either safeguard alone passes this (a closed idle
/// connection leaves the pool; a reused one that fails before sending is replaced once);
/// without both, calls fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_peer_closed_is_replaced_not_failed() {
    let (port, requests, peer) = one_answer_per_connection().await;
    let dir = tempfile::tempdir().unwrap();
    let a = sidecar("caller", dir.path(), None, |c| {
        c.configuration = Some(static_peers(&[("peer", port)]));
        // Only the transport's own handling may save a call here.
        c.builtin_retries.retries = 0;
    })
    .await;
    let call = url(&a, "/v1.0/invoke/peer/method/x");
    // Back to back: the next call may check its connection out before the EOF is seen.
    for i in 0..20 {
        let r = request("GET", &call, &[], "").await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
        assert_eq!(r.text(), "ok", "call {i}");
    }
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 20);
    a.stop().await;
    peer.abort();
}

/// A server that reads one request (no body), answers `200 ok` and closes the connection,
/// as a restarted server's old connections close: its port, the requests it answered, and
/// its task.
pub(crate) async fn one_answer_per_connection() -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = tokio::spawn({
        let requests = requests.clone();
        async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // One request (no body), one answer, then the connection closes.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                if seen.is_empty() {
                    continue;
                }
                requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                drop(socket);
            }
        }
    });
    (port, requests, server)
}
