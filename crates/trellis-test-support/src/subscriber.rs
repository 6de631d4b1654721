//! An in-process pub/sub subscriber app for tests: answers `GET /dapr/subscribe` with the
//! subscriptions it was given and records every other request it receives.
//!
//! Each path answers `200 {"status":"SUCCESS"}` (to a bulk delivery: SUCCESS for every
//! entry) unless a script was set with [`SubscriberApp::respond`] (a list of
//! `(status, body)` answers used in turn, the last one repeating) or an answering function
//! with [`SubscriberApp::respond_with`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request the app received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The entries of a bulk delivery (`com.dapr.event.sent.bulk`); empty for anything else.
    pub fn bulk_entries(&self) -> Vec<serde_json::Value> {
        let v = self.json();
        if v["type"] != "com.dapr.event.sent.bulk" {
            return Vec::new();
        }
        v["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// Computes an answer `(status, body)` from the request.
pub type Responder = Arc<dyn Fn(&Received) -> (u16, String) + Send + Sync>;

/// The default answer: SUCCESS, for a bulk delivery for each of its entries.
fn success(req: &Received) -> String {
    let entries = req.bulk_entries();
    if entries.is_empty() {
        return r#"{"status":"SUCCESS"}"#.to_string();
    }
    let statuses: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| serde_json::json!({"entryId": e["entryId"], "status": "SUCCESS"}))
        .collect();
    serde_json::json!({ "statuses": statuses }).to_string()
}

#[derive(Default)]
struct Shared {
    subscriptions: Option<serde_json::Value>,
    responders: HashMap<String, Responder>,
    scripts: HashMap<String, Vec<(u16, String)>>,
    /// How many requests each path got, to step through its script.
    counts: HashMap<String, usize>,
    received: Vec<Received>,
}

#[derive(Debug)]
pub struct SubscriberApp {
    pub addr: SocketAddr,
    shared: Arc<Mutex<SharedDebug>>,
    task: tokio::task::JoinHandle<()>,
}

/// `Shared` behind a Debug-friendly name.
struct SharedDebug(Shared);

impl std::fmt::Debug for SharedDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("received", &self.0.received.len())
            .finish()
    }
}

impl SubscriberApp {
    /// Starts on a free port. `subscriptions` is the `/dapr/subscribe` answer; `None`
    /// answers 404 there.
    pub async fn start(subscriptions: Option<serde_json::Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, subscriptions)
    }

    /// Starts on a given port.
    pub async fn start_on(port: u16, subscriptions: Option<serde_json::Value>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        Self::serve(listener, subscriptions)
    }

    fn serve(listener: TcpListener, subscriptions: Option<serde_json::Value>) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Mutex::new(SharedDebug(Shared {
            subscriptions,
            ..Shared::default()
        })));
        let shared2 = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // As a real app's server does (and as `app.rs` does): a small answer must
                // not wait for the sidecar's delayed ACK.
                let _ = stream.set_nodelay(true);
                let shared = shared2.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets the answers of `path`: used in turn, the last repeating.
    pub fn respond(&self, path: &str, answers: &[(u16, &str)]) {
        let mut s = self.shared.lock().expect("lock");
        s.0.scripts.insert(
            path.to_string(),
            answers.iter().map(|(c, b)| (*c, b.to_string())).collect(),
        );
    }

    /// Answers requests to `path` with `f`, which wins over a script.
    pub fn respond_with(
        &self,
        path: &str,
        f: impl Fn(&Received) -> (u16, String) + Send + Sync + 'static,
    ) {
        let mut s = self.shared.lock().expect("lock");
        s.0.responders.insert(path.to_string(), Arc::new(f));
    }

    /// Every delivery (request other than `GET /dapr/subscribe`) so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().expect("lock").0.received.clone()
    }

    /// The deliveries to `path` so far.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.received_on(path);
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for SubscriberApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Mutex<SharedDebug>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    if method == "GET" && path == "/dapr/subscribe" {
        let subs = shared.lock().expect("lock").0.subscriptions.clone();
        let mut resp = match subs {
            Some(v) => Response::new(Full::new(Bytes::from(v.to_string()))),
            None => {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        resp.headers_mut()
            .insert("content-type", "application/json".parse().expect("header"));
        return Ok(resp);
    }
    let headers = req.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, answer) = {
        let mut s = shared.lock().expect("lock");
        let s = &mut s.0;
        let received = Received {
            method,
            path: path.clone(),
            content_type,
            headers,
            body,
        };
        let n = s.counts.entry(path.clone()).or_default();
        *n += 1;
        let answer = match (s.responders.get(&path), s.scripts.get(&path)) {
            (Some(f), _) => f(&received),
            (None, Some(script)) if !script.is_empty() => {
                let i = (*n - 1).min(script.len() - 1);
                script[i].clone()
            }
            _ => (200, success(&received)),
        };
        s.received.push(received);
        answer
    };
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    Ok(resp)
}
