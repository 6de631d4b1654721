//! An in-process HTTP app for invocation tests, listening on a real loopback socket.
//!
//! Routes:
//! * `/status/<code>`: answers `<code>` with `x-custom: yes` and body `status <code>`
//! * `/download/<n>`: streams `n` bytes (64 KiB chunks) without holding them in memory
//! * `/upload`: counts the request body as it streams, answers `{"received": n}`
//! * `/slow/<ms>`: answers after `ms` milliseconds
//! * `/flaky/<n>/...`: a flapping callee: the first `n` requests to the exact path answer
//!   503, later ones 200 (`ok after <n>`)
//! * `/dapr/subscribe`: 404, as an app without pub/sub subscriptions answers (not counted
//!   in [`TestApp::hits`]: every sidecar asks it once the app is up)
//! * anything else: a JSON echo of method, path, query, headers and body
//!
//! Every response carries `x-instance: <name>` so tests can tell instances apart.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    per_path: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts the app on a free loopback port.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test app");
        Self::serve(listener, name)
    }

    /// Starts the app on a given port (to test waiting for an app that is late).
    pub async fn start_on(port: u16, name: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind test app");
        Self::serve(listener, name)
    }

    fn serve(listener: TcpListener, name: &str) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let per_path = Arc::new(Mutex::new(HashMap::new()));
        let (name_owned, hits2, per_path2) = (name.to_string(), hits.clone(), per_path.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set, owned by the accept loop: aborting the loop
            // (`stop`, drop) drops the set, which aborts every connection with it.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (name, hits) = (name_owned.clone(), hits2.clone());
                let per_path = per_path2.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut before = 0;
                        if req.uri().path() != "/dapr/subscribe" {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let mut counts = per_path.lock().unwrap_or_else(|e| e.into_inner());
                            let count = counts.entry(req.uri().path().to_string()).or_insert(0);
                            before = *count;
                            *count += 1;
                        }
                        handle(req, name.clone(), before)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
            hits,
            per_path,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests to `path` served so far.
    pub fn hits_on(&self, path: &str) -> usize {
        let counts = self.per_path.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(path).copied().unwrap_or(0)
    }

    /// Stops listening and drops open connections.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Answers `req`; `before` is how many requests its path got before it.
async fn handle(
    req: Request<Incoming>,
    name: String,
    before: usize,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut resp = if path == "/dapr/subscribe" {
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    } else if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = Response::new(full(format!("status {}", status.as_u16())));
        *r.status_mut() = status;
        r.headers_mut()
            .insert("x-custom", "yes".parse().expect("header"));
        r
    } else if let Some(n) = path.strip_prefix("/download/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_stream(total, chunk);
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut()
            .insert("content-length", total.to_string().parse().expect("header"));
        r
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut received: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        received += d.len() as u64;
                    }
                }
                Err(_) => break,
            }
        }
        Response::new(full(format!("{{\"received\":{received}}}")))
    } else if let Some(rest) = path.strip_prefix("/flaky/") {
        let failures: usize = rest
            .split('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // Read the whole request first, as an app does before it answers.
        let _ = req.into_body().collect().await;
        if before < failures {
            let mut r = Response::new(full(format!("flaky failure {}", before + 1)));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        } else {
            Response::new(full(format!("ok after {failures}")))
        }
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
        Response::new(full("slow"))
    } else {
        let method = req.method().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                )
            })
            .collect();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let echo = serde_json::json!({
            "method": method,
            "path": path,
            "query": query,
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let mut r = Response::new(full(echo.to_string()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        r
    };
    resp.headers_mut().insert(
        "x-instance",
        name.parse()
            .unwrap_or_else(|_| "?".parse().expect("header")),
    );
    Ok(resp)
}

fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            Some((Ok(Frame::data(chunk.slice(..n as usize))), left - n))
        }
    })
}
