//! The subscriber side of `trellis-bench pubsub`: the app the subscriber sidecars deliver
//! to, served by the bench process itself, and the [`Board`] where every path (sidecar
//! deliveries and the bench's own direct consumers) records what arrived and when.
//!
//! The app runs on its own thread with its own single-threaded tokio runtime, so taking
//! deliveries never delays the publisher's fixed schedule on the main thread, and the
//! reverse. The bench's direct consumers (the in-process SQLite broker, a JetStream pull
//! consumer) are spawned onto the same thread, so the direct and sidecar paths are received
//! and timed by the same code.
//!
//! The app answers `GET /dapr/subscribe` with whatever the bench set before starting a
//! subscriber sidecar, and takes deliveries on any `POST` path in both of Dapr's shapes:
//! one CloudEvent (answered `{"status":"SUCCESS"}`) or the bulk envelope
//! `com.dapr.event.sent.bulk` (answered with a SUCCESS status for every entry). The shape
//! is told by the body, not by the subscription: a sidecar without bulk delivery sends
//! single events to a bulk subscription.
//!
//! Every payload carries its sequence number and its publish time (microseconds on this
//! process's monotonic clock, see [`now_us`]), so publish→delivery latency needs no clock
//! synchronisation: publisher and receiver are the same process.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The sequence number of probe messages: published until one arrives, to know a
/// subscription is live before measuring. Never counted.
pub const PROBE_SEQ: u64 = u64::MAX;

/// Highest latency the histograms hold (60 s, in µs); larger values are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Sequence numbers above this are not tracked one by one (the bitset would be huge);
/// no phase comes near it.
const MAX_TRACKED_SEQ: u64 = 1 << 28;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the bench's epoch (fixed at the first call): the publish time
/// written into payloads and compared with the receive time.
pub fn now_us() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The JSON payload of message `seq` published at `ts_us`, padded with a string to
/// `size` bytes when it is shorter: `{"seq":1,"ts":2,"pad":"xxx…"}`.
pub fn payload(seq: u64, ts_us: u64, size: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"ts\":{ts_us}");
    let mut s = String::with_capacity(size.max(head.len() + 1));
    s.push_str(&head);
    // `,"pad":""}` is 10 bytes.
    if size >= head.len() + 10 {
        s.push_str(",\"pad\":\"");
        s.extend(std::iter::repeat_n('x', size - head.len() - 10));
        s.push('"');
    }
    s.push('}');
    s
}

/// What a payload says about itself.
#[derive(Deserialize, Clone, Copy)]
struct Stamp {
    seq: u64,
    ts: u64,
}

/// One CloudEvent, or the bulk envelope: parsed in one pass, unknown fields skipped.
#[derive(Deserialize)]
struct Delivered {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    data: Option<Stamp>,
    #[serde(default)]
    entries: Option<Vec<WireEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEntry {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    event: Option<WireEvent>,
}

#[derive(Deserialize)]
struct WireEvent {
    #[serde(default)]
    data: Option<Stamp>,
}

/// The stamp of a stored message as the bench's direct consumers receive it: a CloudEvent
/// (the shape the sidecar stores), or the bare payload.
pub fn stamp_of(data: &[u8]) -> Option<(u64, u64)> {
    #[derive(Deserialize)]
    struct Either {
        #[serde(default)]
        data: Option<Stamp>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(default)]
        ts: Option<u64>,
    }
    let e: Either = serde_json::from_slice(data).ok()?;
    match (e.data, e.seq, e.ts) {
        (Some(s), _, _) => Some((s.seq, s.ts)),
        (None, Some(seq), Some(ts)) => Some((seq, ts)),
        _ => None,
    }
}

/// Everything received for one topic.
pub struct Tally {
    seen: Vec<u64>,
    /// Distinct sequence numbers received (probes excluded).
    pub unique: u64,
    /// Deliveries of a sequence number already received (at-least-once redeliveries).
    pub duplicates: u64,
    /// Sequence numbers from here on are the measured ones (earlier = warm-up).
    measured_from: u64,
    /// Distinct measured sequence numbers received.
    pub measured: u64,
    /// First and last delivery (any sequence number).
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// Publish→receive latency of the first delivery of each measured message, in µs.
    pub latency: Histogram<u64>,
    /// HTTP requests (or broker deliveries) that carried this topic's messages.
    pub requests: u64,
    /// Messages those requests carried (probes included): `entries / requests` is the
    /// average bulk size.
    pub entries: u64,
}

impl Tally {
    fn new(measured_from: u64) -> Result<Self> {
        Ok(Self {
            seen: Vec::new(),
            unique: 0,
            duplicates: 0,
            measured_from,
            measured: 0,
            first: None,
            last: None,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            requests: 0,
            entries: 0,
        })
    }

    fn record(&mut self, seq: u64, ts: u64, at: Instant, now_us: u64) {
        self.first.get_or_insert(at);
        self.last = Some(at);
        if seq >= MAX_TRACKED_SEQ {
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq >= self.measured_from {
            self.measured += 1;
            self.latency
                .saturating_record(now_us.saturating_sub(ts).clamp(1, MAX_LATENCY_US));
        }
    }

    /// Latency at quantile `q`, in ms.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

#[derive(Default)]
struct Inner {
    /// The answer to `GET /dapr/subscribe`.
    subscriptions: Bytes,
    tallies: HashMap<String, Tally>,
    /// Topics on which a probe arrived.
    probed: HashSet<String>,
    /// Deliveries the app could not attribute (unknown topic, no stamp).
    stray: u64,
}

/// What arrived, per topic; shared by the app thread and the bench.
#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters half-updated; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the app's `GET /dapr/subscribe` answer (read by a sidecar when it starts).
    pub fn set_subscriptions(&self, json: String) {
        self.lock().subscriptions = Bytes::from(json);
    }

    /// Starts counting `topic` afresh; sequence numbers from `measured_from` on are measured.
    pub fn track(&self, topic: &str, measured_from: u64) -> Result<()> {
        let tally = Tally::new(measured_from)?;
        self.lock().tallies.insert(topic.to_owned(), tally);
        Ok(())
    }

    /// Stops counting `topic` and returns what arrived.
    pub fn take(&self, topic: &str) -> Option<Tally> {
        self.lock().tallies.remove(topic)
    }

    /// (distinct, distinct measured) messages received on `topic` so far.
    pub fn progress(&self, topic: &str) -> (u64, u64) {
        self.lock()
            .tallies
            .get(topic)
            .map_or((0, 0), |t| (t.unique, t.measured))
    }

    pub fn probed(&self, topic: &str) -> bool {
        self.lock().probed.contains(topic)
    }

    pub fn stray(&self) -> u64 {
        self.lock().stray
    }

    /// Records one delivery request carrying `stamps` for `topic`.
    pub fn record(&self, topic: Option<&str>, stamps: &[Option<(u64, u64)>]) {
        let (at, now) = (Instant::now(), now_us());
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(topic) = topic else {
            inner.stray += stamps.len() as u64;
            return;
        };
        if stamps.iter().any(|s| matches!(s, Some((PROBE_SEQ, _)))) {
            inner.probed.insert(topic.to_owned());
        }
        let Some(tally) = inner.tallies.get_mut(topic) else {
            let real = stamps
                .iter()
                .filter(|s| !matches!(s, Some((PROBE_SEQ, _))))
                .count();
            inner.stray += real as u64;
            return;
        };
        tally.requests += 1;
        tally.entries += stamps.len() as u64;
        for s in stamps {
            match s {
                Some((PROBE_SEQ, _)) => {}
                Some((seq, ts)) => tally.record(*seq, *ts, at, now),
                None => inner.stray += 1,
            }
        }
    }

    /// Handles one delivery body; returns the app's answer.
    fn deliver(&self, body: &[u8]) -> String {
        match serde_json::from_slice::<Delivered>(body) {
            Ok(Delivered {
                topic,
                entries: Some(entries),
                ..
            }) => {
                let stamps: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        e.event
                            .as_ref()
                            .and_then(|ev| ev.data)
                            .map(|s| (s.seq, s.ts))
                    })
                    .collect();
                self.record(topic.as_deref(), &stamps);
                bulk_answer(entries.iter().map(|e| e.entry_id.as_str()))
            }
            Ok(Delivered { topic, data, .. }) => {
                self.record(topic.as_deref(), &[data.map(|s| (s.seq, s.ts))]);
                SUCCESS.to_owned()
            }
            // Some field had an unexpected shape (an event as a string, data not an
            // object...): the slow, general reading.
            Err(_) => self.deliver_value(body),
        }
    }

    fn deliver_value(&self, body: &[u8]) -> String {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            self.record(None, &[None]);
            return SUCCESS.to_owned();
        };
        let topic = v.get("topic").and_then(Value::as_str);
        let stamp = |ev: &Value| -> Option<(u64, u64)> {
            let ev = match ev {
                // A CloudEvent sent as a JSON string.
                Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
                other => other.clone(),
            };
            let data = ev.get("data").unwrap_or(&ev);
            let data = match data {
                Value::String(s) => serde_json::from_str::<Value>(s).ok()?,
                other => other.clone(),
            };
            Some((data.get("seq")?.as_u64()?, data.get("ts")?.as_u64()?))
        };
        if let Some(entries) = v.get("entries").and_then(Value::as_array) {
            let stamps: Vec<_> = entries
                .iter()
                .map(|e| e.get("event").and_then(stamp))
                .collect();
            self.record(topic, &stamps);
            bulk_answer(
                entries
                    .iter()
                    .map(|e| e.get("entryId").and_then(Value::as_str).unwrap_or("")),
            )
        } else {
            self.record(topic, &[stamp(&v)]);
            SUCCESS.to_owned()
        }
    }
}

const SUCCESS: &str = r#"{"status":"SUCCESS"}"#;

/// `{"statuses":[{"entryId":"…","status":"SUCCESS"},…]}`.
fn bulk_answer<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from(r#"{"statuses":["#);
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"entryId":"#);
        out.push_str(&serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into()));
        out.push_str(r#","status":"SUCCESS"}"#);
    }
    out.push_str("]}");
    out
}

/// The running app: its port, its board, and a handle to spawn the bench's direct
/// consumers onto its thread. Stopped (thread joined) on drop.
pub struct App {
    pub port: u16,
    pub board: Arc<Board>,
    handle: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    /// Binds a free loopback port and starts serving on a new thread.
    pub fn start() -> Result<Self> {
        let listener = StdListener::bind("127.0.0.1:0").context("app: binding 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let board = Arc::new(Board::default());
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel();
        let b = board.clone();
        let thread = std::thread::Builder::new()
            .name("bench-app".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async move {
                    tokio::select! {
                        res = serve(listener, b) => {
                            if let Err(e) = res {
                                eprintln!("app: stopped serving: {e:#}");
                            }
                        }
                        _ = shutdown_rx => {}
                    }
                });
            })
            .context("starting the app thread")?;
        let handle = handle_rx
            .recv()
            .context("the app thread ended before starting")?
            .context("building the app's runtime")?;
        Ok(Self {
            port,
            board,
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the app's thread.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: StdListener, board: Arc<Board>) -> Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let board = board.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(board.clone(), req));
            // Errors here are the sidecar hanging up; nothing to report.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    board: Arc<Board>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (status, body) = if req.method() == Method::GET && req.uri().path() == "/dapr/subscribe" {
        (StatusCode::OK, board.lock().subscriptions.clone())
    } else if req.method() == Method::POST {
        let body = req.into_body().collect().await?.to_bytes();
        (StatusCode::OK, Bytes::from(board.deliver(&body)))
    } else {
        // `/dapr/config` and the like: nothing to configure.
        (StatusCode::NOT_FOUND, Bytes::new())
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Waits until `topic` has `want` distinct measured messages, or `limit` passes.
/// Returns whether they all arrived.
pub async fn wait_for(board: &Board, topic: &str, want: u64, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut next_note = Instant::now() + Duration::from_secs(1);
    loop {
        let (_, measured) = board.progress(topic);
        if measured >= want {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        if now >= next_note {
            eprintln!("  {topic}: {measured}/{want} delivered");
            next_note += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_asked_size_and_reads_back() {
        for size in [0, 10, 40, 1024] {
            let p = payload(12, 34, size);
            if size >= 40 {
                assert_eq!(p.len(), size, "{p}");
            }
            assert_eq!(stamp_of(p.as_bytes()), Some((12, 34)));
        }
    }

    #[test]
    fn both_delivery_shapes_are_counted() {
        let board = Board::default();
        board.track("t", 0).unwrap();
        let single = format!(r#"{{"topic":"t","data":{}}}"#, payload(1, now_us(), 100));
        assert_eq!(board.deliver(single.as_bytes()), SUCCESS);
        let bulk = format!(
            r#"{{"id":"x","entries":[{{"entryId":"a","event":{{"data":{}}},"contentType":"application/cloudevents+json","metadata":{{}}}},{{"entryId":"b","event":{{"data":{}}}}}],"topic":"t","pubsubname":"p","type":"com.dapr.event.sent.bulk"}}"#,
            payload(2, now_us(), 50),
            payload(1, now_us(), 50)
        );
        let answer: Value = serde_json::from_str(&board.deliver(bulk.as_bytes())).unwrap();
        assert_eq!(answer["statuses"][1]["entryId"], "b");
        assert_eq!(answer["statuses"][0]["status"], "SUCCESS");
        // An event as a JSON string takes the slow path and still counts.
        let odd = format!(
            r#"{{"entries":[{{"entryId":"c","event":{}}}],"topic":"t"}}"#,
            serde_json::to_string(&format!(r#"{{"data":{}}}"#, payload(3, 0, 0))).unwrap()
        );
        let answer: Value = serde_json::from_str(&board.deliver(odd.as_bytes())).unwrap();
        assert_eq!(answer["statuses"][0]["entryId"], "c");
        let t = board.take("t").unwrap();
        assert_eq!(
            (t.unique, t.duplicates, t.requests, t.entries),
            (3, 1, 3, 4)
        );
    }
}
