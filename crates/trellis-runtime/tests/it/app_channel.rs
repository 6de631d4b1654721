//! The HTTP channel to the app (HTTP/1.1 and h2c), driven directly against apps on
//! loopback: which connections it opens, keeps, replaces and closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt as _;
use trellis_runtime::invoke::{AppChannel, InvokeError, open_app_channel};
use trellis_runtime::{AppChannelConfig, AppHealthCheck, AppProtocol};
use trellis_test_support::wait_until;

use crate::invoke::one_answer_per_connection;

/// Connections an app has accepted, and how many of them have ended.
#[derive(Default)]
struct Connections {
    opened: AtomicUsize,
    closed: AtomicUsize,
}

/// An app on a free port that serves each connection it accepts with `serve`, counting
/// them: its port, the counts, and its task.
async fn counting_server<F, Fut>(serve: F) -> (u16, Arc<Connections>, tokio::task::JoinHandle<()>)
where
    F: Fn(hyper_util::rt::TokioIo<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Connections::default());
    let task = tokio::spawn({
        let counts = counts.clone();
        async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                // As a real server does: without it, a small frame written after the answer
                // (an HTTP/2 GOAWAY) can wait for the client's delayed ACK, about 40 ms.
                socket.set_nodelay(true).unwrap();
                counts.opened.fetch_add(1, Ordering::SeqCst);
                let counts = counts.clone();
                let served = serve(hyper_util::rt::TokioIo::new(socket));
                tokio::spawn(async move {
                    served.await;
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });
    (port, counts, task)
}

/// Ends the writing side of `socket`, then reads and discards until the peer closes (or a
/// second passes), so that unread bytes never turn the close into a reset.
async fn lingering_close(mut socket: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// An HTTP/1.1 echo app that answers after `delay` and counts its connections.
async fn counting_app(delay: Duration) -> (u16, Arc<Connections>, tokio::task::JoinHandle<()>) {
    counting_server(move |io| async move {
        let echo =
            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                tokio::time::sleep(delay).await;
                let body = req.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(body)))
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, echo)
            .await;
    })
    .await
}

fn http_channel(port: u16) -> Arc<dyn AppChannel> {
    channel(port, AppProtocol::Http)
}

/// The channel to an app on 127.0.0.1:`port` speaking `protocol`.
fn channel(port: u16, protocol: AppProtocol) -> Arc<dyn AppChannel> {
    let config = AppChannelConfig {
        host: "127.0.0.1".into(),
        port,
        protocol,
        health_check: None,
    };
    open_app_channel(&config, None)
}

/// One call to `path` with `body`; the answer's status and body, read to the end.
async fn call(
    channel: &dyn AppChannel,
    path: &str,
    body: trellis_runtime::Body,
) -> Result<(u16, Bytes), InvokeError> {
    let req = Request::post("/").body(body).unwrap();
    let resp = channel.call(path, req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body))
}

/// Calls one after another share one connection, whatever their bodies; calls at once each
/// get one; a health probe takes an idle one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_the_app_reuse_its_connections() {
    let (port, counts, app) = counting_app(Duration::ZERO).await;
    let channel = http_channel(port);
    for i in 0..5 {
        let sent = format!("call {i}");
        let (status, body) = call(&*channel, "/echo", sent.clone().into()).await.unwrap();
        assert_eq!((status, body), (200, Bytes::from(sent)));
    }
    // A streamed request body of 1 MiB, echoed back: it streams both ways on the same
    // connection, which carries the next call once the answer has been read.
    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 64 * 1024])));
    let streamed = trellis_runtime::Body::from_stream(futures_util::stream::iter(chunks));
    let (status, body) = call(&*channel, "/echo", streamed).await.unwrap();
    assert_eq!((status, body.len()), (200, 1024 * 1024));
    assert_eq!(counts.opened.load(Ordering::SeqCst), 1);

    let check = AppHealthCheck {
        path: "/healthz".into(),
        ..AppHealthCheck::default()
    };
    assert!(channel.probe(&check).await);
    assert!(channel.probe(&check).await);
    assert_eq!(
        counts.opened.load(Ordering::SeqCst),
        1,
        "probes reuse it too"
    );
    app.abort();

    // Three calls at once need three connections; afterwards all three are kept.
    let (port, counts, app) = counting_app(Duration::from_millis(200)).await;
    let channel = http_channel(port);
    let calls = (0..3).map(|i| call(&*channel, "/echo", format!("{i}").into()));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap().0, 200);
    }
    assert_eq!(counts.opened.load(Ordering::SeqCst), 3);
    let calls = (0..3).map(|i| call(&*channel, "/echo", format!("{i}").into()));
    for answer in futures_util::future::join_all(calls).await {
        assert_eq!(answer.unwrap().0, 200);
    }
    assert_eq!(
        counts.opened.load(Ordering::SeqCst),
        3,
        "the idle three were reused"
    );
    assert_eq!(counts.closed.load(Ordering::SeqCst), 0);
    app.abort();
}

/// A burst of calls at once (a job store's due jobs, a pub/sub backlog) leaves its
/// connections for the next burst. Kept to 256 idle ones, each burst past that reopened the
/// rest, which halved the jobs bench's triggers per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_keeps_its_connections_for_the_next() {
    const BURST: usize = 600;
    let (port, counts, app) = counting_app(Duration::from_millis(300)).await;
    let channel = http_channel(port);
    for burst in 0..2 {
        let calls = (0..BURST).map(|i| call(&*channel, "/echo", format!("{i}").into()));
        for answer in futures_util::future::join_all(calls).await {
            assert_eq!(answer.unwrap().0, 200, "burst {burst}");
        }
    }
    assert_eq!(counts.opened.load(Ordering::SeqCst), BURST);
    assert_eq!(counts.closed.load(Ordering::SeqCst), 0);
    app.abort();
}

/// An app that closes each connection after one answer (as a restarted app's old
/// connections close): every call gets through on a new connection, and reaches the app
/// once.
///
/// The calls are 10 ms apart. Back to back, a call can be written to a connection whose
/// close is still on its way, which no client can tell from an app that read the request
/// and died; the error then says the call failed after it was sent, and nothing retries it
/// but a resiliency policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_app_closed_is_replaced_not_failed() {
    let (port, requests, app) = one_answer_per_connection().await;
    let channel = http_channel(port);
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let req = Request::get("/")
            .body(trellis_runtime::Body::empty())
            .unwrap();
        let resp = channel.call("/x", req).await.unwrap();
        assert_eq!(resp.status(), 200, "call {i}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok", "call {i}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 20);
    app.abort();
}

/// Nothing listening: the request never reached the app, and the error says so (the
/// callee's sidecar reports it as undelivered, which the caller may send again).
#[tokio::test]
async fn an_app_that_is_not_listening_is_not_reached() {
    let port = trellis_test_support::free_port();
    let channel = http_channel(port);
    match call(&*channel, "/x", "body".into()).await {
        Err(InvokeError::AppNotReached(detail)) => {
            assert!(detail.contains(&port.to_string()), "{detail}");
        }
        other => panic!("expected AppNotReached, got {other:?}"),
    }
    let check = AppHealthCheck::default();
    assert!(!channel.probe(&check).await);
}

/// A connection left idle for a minute is closed (tokio's clock, paused and moved on), as the app would otherwise hold every
/// connection a burst opened for as long as the sidecar runs.
#[tokio::test]
async fn idle_connections_to_the_app_close_after_a_minute() {
    let (port, counts, app) = counting_app(Duration::ZERO).await;
    let channel = http_channel(port);
    assert_eq!(call(&*channel, "/echo", "x".into()).await.unwrap().0, 200);
    let closed = || counts.closed.load(Ordering::SeqCst);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(30)).await;
    tokio::time::resume();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(closed(), 0, "30 s idle is not yet too long");

    // The reaper looks every 15 s; by 80 s it has seen the connection idle for 60.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(50)).await;
    tokio::time::resume();
    assert!(
        wait_until(Duration::from_secs(5), || async { closed() == 1 }).await,
        "the idle connection was not closed"
    );
    // The next call opens a new one.
    assert_eq!(call(&*channel, "/echo", "x".into()).await.unwrap().0, 200);
    assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    app.abort();
}

/// `--app-protocol h2c`: calls reach the app as HTTP/2 with prior knowledge, with the path
/// and query they were sent to, and calls at once share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_gets_http2_calls_over_one_connection() {
    // Answers with the version and URI it saw, and the body.
    let (port, counts, app) = counting_server(|io| async move {
        let echo = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let seen = format!("{:?} {}", req.version(), req.uri());
            let body = req.into_body().collect().await?.to_bytes();
            let answer = format!("{seen} {}", String::from_utf8_lossy(&body));
            Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(Bytes::from(
                answer,
            ))))
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(io, echo)
            .await;
    })
    .await;
    let channel = channel(port, AppProtocol::H2c);
    let calls = (0..3).map(|i| call(&*channel, "/orders/7?x=1", format!("call {i}").into()));
    let answers = futures_util::future::join_all(calls).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("HTTP/2.0 http://127.0.0.1:{port}/orders/7?x=1 call {i}")
        );
    }
    assert_eq!(counts.opened.load(Ordering::SeqCst), 1);
    app.abort();
}

/// An h2c app that ends its connection after each answer (a graceful GOAWAY): every next
/// call goes out on a new connection rather than failing on the closed one, and a body too
/// large to travel whole streams to the app and back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_that_closed_its_connection_gets_the_next_call_on_a_new_one() {
    let (port, counts, app) = counting_server(|mut io| async move {
        let (done, answered) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::Mutex::new(Some(done)));
        let echo = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let done = done.clone();
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                if let Some(done) = done.lock().unwrap().take() {
                    let _ = done.send(());
                }
                Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(body)))
            }
        });
        {
            let conn =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(&mut io, echo);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = answered => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        // Close as a well-behaved server does: end the writing side, then read until the
        // client closes too. Dropping the socket at once would reset it whenever the
        // client's last window updates are still unread, and a reset discards answer bytes
        // the client has not read yet (the test would fail on the test app, not on Trellis).
        lingering_close(io.into_inner()).await;
    })
    .await;
    let channel = channel(port, AppProtocol::H2c);
    let large = Bytes::from(vec![b'x'; 1 << 20]);
    for i in 0..5 {
        // As in the HTTP/1.1 test above: the GOAWAY must have arrived before the next call
        // (a call that races it is the next test's case).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = if i == 2 {
            large.clone()
        } else {
            Bytes::from(format!("call {i}"))
        };
        let (status, body) = call(&*channel, "/echo", sent.clone().into())
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert_eq!(status, 200, "call {i}");
        assert_eq!(body, sent, "call {i}");
    }
    assert_eq!(counts.opened.load(Ordering::SeqCst), 5);
    app.abort();
}

/// An h2c app that refuses a call unprocessed (`REFUSED_STREAM`, RFC 9113 8.7): the call
/// was not reached, so it may be sent again, and the connection stays for the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_app_refused_unprocessed_was_not_reached() {
    let (port, counts, app) = counting_server(|io| async move {
        let Ok(mut conn) = h2::server::handshake(io.into_inner()).await else {
            return;
        };
        let mut refuse = true;
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            if std::mem::take(&mut refuse) {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
            tokio::spawn(async move {
                let mut body = req.into_body();
                let mut got = Vec::new();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                let mut sending = respond.send_response(http::Response::new(()), false)?;
                sending.send_data(Bytes::from(got), true)
            });
        }
    })
    .await;
    let channel = channel(port, AppProtocol::H2c);
    match call(&*channel, "/echo", "first".into()).await {
        Err(InvokeError::AppNotReached(detail)) => {
            assert!(detail.contains("refused"), "{detail}");
        }
        other => panic!("expected AppNotReached, got {other:?}"),
    }
    let (status, body) = call(&*channel, "/echo", "second".into()).await.unwrap();
    assert_eq!((status, body), (200, Bytes::from("second")));
    assert_eq!(counts.opened.load(Ordering::SeqCst), 1);
    app.abort();
}

/// An h2c app that is not listening: not reached, as for HTTP/1.1.
#[tokio::test]
async fn an_h2c_app_that_is_not_listening_is_not_reached() {
    let port = trellis_test_support::free_port();
    let channel = channel(port, AppProtocol::H2c);
    match call(&*channel, "/x", "body".into()).await {
        Err(InvokeError::AppNotReached(detail)) => {
            assert!(detail.contains(&port.to_string()), "{detail}");
        }
        other => panic!("expected AppNotReached, got {other:?}"),
    }
}
