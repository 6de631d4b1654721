//! The load generator: clients (persistent HTTP/1.1 keep-alive connections,
//! or direct connections to a database) driven either on a fixed open-loop
//! schedule or back to back (closed loop).
//!
//! Latencies go into an HDR histogram with microsecond resolution.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// No single exchange may take longer than this; keeps every phase bounded
/// in time even if a proxy stops answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Highest latency the histograms can hold (60 s, in µs); larger values are
/// clamped rather than dropped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Where requests go: a loopback port and the request path.
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    pub path: String,
}

/// One load phase on the clock: load starts at `start`, results count from
/// `measure_from` (the end of the warm-up) and nothing is sent after `end`.
/// Shared with the resource monitor so both look at the same window.
#[derive(Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Schedule {
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        // A few ms of slack so every connection task is spawned and waiting
        // before the first request is due.
        let start = Instant::now() + Duration::from_millis(20);
        Self {
            start,
            measure_from: start + warmup,
            end: start + warmup + duration,
        }
    }

    pub fn measured(&self) -> Duration {
        self.end - self.measure_from
    }
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// Open loop at this many requests per second in total.
    FixedRate(f64),
    /// Each connection sends its next request as soon as the previous
    /// response is in.
    MaxThroughput,
}

/// Results of one phase against one target (measured window only).
pub struct Outcome {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
}

impl Outcome {
    fn empty(window: Duration) -> Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            ok: 0,
            errors: 0,
            first_error: None,
            window,
        })
    }

    /// Successful requests per second over the measured window.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    fn record(&mut self, res: Result<()>, latency: Duration) {
        match res {
            Ok(()) => {
                self.ok += 1;
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.hist.saturating_record(us.clamp(1, MAX_LATENCY_US));
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    /// Adds a later round of the same phase: its requests and its window.
    pub fn merge_round(&mut self, later: Self) -> Result<()> {
        self.window += later.window;
        self.merge(later)
    }

    /// Adds another task's requests over the same window.
    fn merge(&mut self, other: Self) -> Result<()> {
        self.hist.add(&other.hist)?;
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// One load task's way of doing the measured operation: usually one
/// connection (HTTP keep-alive, Redis, PostgreSQL) or a handle on an
/// in-process store. The same fixed-rate and closed-loop machinery drives
/// every kind, so numbers of different paths are comparable.
pub trait Client: Send + 'static {
    /// Performs operation number `seq` of the phase (the slot of the global
    /// schedule, or this task's k, k+n, ... in closed loop). `Err` = failed.
    fn call(&mut self, seq: u64) -> impl Future<Output = Result<()>> + Send;

    /// Called after a failed or timed-out call: drop whatever connection
    /// state might be half-used so the next call starts clean.
    fn reset(&mut self) {}
}

/// One HTTP exchange and what makes it a success.
pub struct Call {
    pub method: Method,
    pub uri: Uri,
    pub body: Bytes,
    pub content_type: HeaderValue,
    pub status: StatusCode,
    /// When set, the response body must be exactly this long.
    pub body_len: Option<usize>,
}

/// A [`Client`] on one keep-alive HTTP/1.1 connection to 127.0.0.1:`port`,
/// sending whatever `make(seq)` describes. It (re)connects lazily.
pub struct HttpClient<F> {
    port: u16,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
    make: F,
}

impl<F: Fn(u64) -> Call + Send + Sync + 'static> HttpClient<F> {
    pub fn new(port: u16, make: F) -> Self {
        Self {
            port,
            host: HeaderValue::try_from(format!("127.0.0.1:{port}"))
                .unwrap_or(HeaderValue::from_static("127.0.0.1")),
            sender: None,
            make,
        }
    }
}

impl<F: Fn(u64) -> Call + Send + Sync + 'static> Client for HttpClient<F> {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let call = (self.make)(seq);
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            slot => slot.insert(connect(self.port).await?),
        };
        let req = Request::builder()
            .method(call.method)
            .uri(call.uri)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, call.content_type)
            .body(Full::new(call.body))?;
        let (status, body) = exchange(sender, req).await?;
        if status != call.status {
            bail!("status {status}: {}", snippet(&body));
        }
        if let Some(len) = call.body_len
            && body.len() != len
        {
            bail!("response body of {} bytes, expected {len}", body.len());
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.sender = None;
    }
}

/// The `invoke` client: POSTs `body` to `target` and expects it echoed.
pub fn echo_client(
    target: &Target,
    body: Bytes,
) -> HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static + use<>> {
    let uri = Uri::try_from(target.path.as_str()).unwrap_or_default();
    HttpClient::new(target.port, move |_| Call {
        method: Method::POST,
        uri: uri.clone(),
        body: body.clone(),
        content_type: HeaderValue::from_static("application/octet-stream"),
        status: StatusCode::OK,
        body_len: Some(body.len()),
    })
}

/// Runs one phase with one task per client until `schedule.end`. Prints a
/// progress line per second.
pub async fn run_clients<C: Client>(
    label: &str,
    mode: Mode,
    schedule: Schedule,
    clients: Vec<C>,
) -> Result<Outcome> {
    let done = Arc::new(AtomicU64::new(0));
    let n = clients.len();
    let mut tasks = Vec::with_capacity(n);
    for (k, client) in clients.into_iter().enumerate() {
        let worker = Worker {
            client,
            schedule,
            done: Arc::clone(&done),
        };
        tasks.push(match mode {
            Mode::FixedRate(rate) => tokio::spawn(worker.fixed_rate(k, n, rate)),
            Mode::MaxThroughput => tokio::spawn(worker.closed_loop(k, n)),
        });
    }
    let ticker = tokio::spawn(progress(label.to_owned(), schedule, Arc::clone(&done)));

    let mut total = Outcome::empty(schedule.measured())?;
    for task in tasks {
        total.merge(task.await.context("load task panicked")??)?;
    }
    // The ticker ends by itself at the last whole second of the schedule.
    let _ = ticker.await;
    Ok(total)
}

/// Unmeasured: operations 0..`count`, shared out over the clients as in a
/// closed loop (client k does k, k+n, ...). Used to write every key once
/// before reads are measured. Fails on the first failed operation.
pub async fn fill<C: Client>(clients: Vec<C>, count: u64) -> Result<()> {
    let n = clients.len() as u64;
    let mut tasks = Vec::new();
    for (k, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut seq = k as u64;
            while seq < count {
                timed(client.call(seq))
                    .await
                    .with_context(|| format!("operation {seq}"))?;
                seq += n;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("fill task panicked")??;
    }
    Ok(())
}

async fn timed(call: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(anyhow!("no response within {REQUEST_TIMEOUT:?}")))
}

async fn progress(label: String, schedule: Schedule, done: Arc<AtomicU64>) {
    let total = (schedule.end - schedule.start).as_secs();
    for second in 1..=total {
        tokio::time::sleep_until((schedule.start + Duration::from_secs(second)).into()).await;
        let phase = if Instant::now() < schedule.measure_from {
            " (warm-up)"
        } else {
            ""
        };
        eprintln!(
            "  {label}: {second}/{total} s, {} responses{phase}",
            done.load(Ordering::Relaxed)
        );
    }
}

/// One client's share of the load.
struct Worker<C> {
    client: C,
    schedule: Schedule,
    done: Arc<AtomicU64>,
}

impl<C: Client> Worker<C> {
    /// Open loop: client `k` of `n` owns requests k, k+n, k+2n, ... of a
    /// global schedule with one request every 1/`rate` seconds.
    ///
    /// Latency counts from the *scheduled* send time whenever the connection
    /// was still busy with an earlier request at that time, so a stall shows
    /// up in every request it delayed (no coordinated omission). When the
    /// connection was idle, latency counts from the actual send: the tokio
    /// timer has ~1 ms granularity, and that timer lag is the generator's
    /// own jitter, not latency of the system under test.
    async fn fixed_rate(mut self, k: usize, n: usize, rate: f64) -> Result<Outcome> {
        let mut out = Outcome::empty(self.schedule.measured())?;
        for i in 0u64.. {
            let slot = k as u64 + i * n as u64;
            let scheduled = self.schedule.start + Duration::from_secs_f64(slot as f64 / rate);
            if scheduled >= self.schedule.end {
                break;
            }
            let busy = Instant::now() > scheduled;
            if !busy {
                tokio::time::sleep_until(scheduled.into()).await;
            }
            let from = if busy { scheduled } else { Instant::now() };
            let res = self.exchange(slot).await;
            let latency = from.elapsed();
            self.done.fetch_add(1, Ordering::Relaxed);
            if scheduled >= self.schedule.measure_from {
                out.record(res, latency);
            }
        }
        Ok(out)
    }

    /// Closed loop: back-to-back operations by this client until the end.
    async fn closed_loop(mut self, k: usize, n: usize) -> Result<Outcome> {
        let mut out = Outcome::empty(self.schedule.measured())?;
        for i in 0u64.. {
            let sent = Instant::now();
            if sent >= self.schedule.end {
                break;
            }
            let res = self.exchange(k as u64 + i * n as u64).await;
            let failed = res.is_err();
            self.done.fetch_add(1, Ordering::Relaxed);
            if sent >= self.schedule.measure_from {
                out.record(res, sent.elapsed());
            }
            if failed {
                // Don't spin on a dead target; errors are counted either way.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(out)
    }

    async fn exchange(&mut self, seq: u64) -> Result<()> {
        bounded(&mut self.client, seq).await
    }
}

/// One operation, bounded in time. Any failure resets the client so the next operation
/// starts clean.
async fn bounded<C: Client>(client: &mut C, seq: u64) -> Result<()> {
    let res = timed(client.call(seq)).await;
    if res.is_err() {
        client.reset();
    }
    res
}

/// Sequential: one operation at a time on `client`, operations `first..first + warmup`
/// unrecorded, then `count` recorded, each timed from its send to its answer. Nothing
/// else is in flight, so this is a hop's own cost with no queueing. The window is the
/// recorded part's wall time.
pub async fn sequential<C: Client>(
    client: &mut C,
    first: u64,
    warmup: u64,
    count: u64,
) -> Result<Outcome> {
    for seq in first..first + warmup {
        // A failure here shows up again in the recorded part, where it is counted.
        let _ = bounded(client, seq).await;
    }
    let mut out = Outcome::empty(Duration::ZERO)?;
    let started = Instant::now();
    for seq in first + warmup..first + warmup + count {
        let sent = Instant::now();
        let res = bounded(client, seq).await;
        out.record(res, sent.elapsed());
    }
    out.window = started.elapsed();
    Ok(out)
}

/// Opens a keep-alive HTTP/1.1 connection to 127.0.0.1:`port`.
pub(crate) async fn connect(port: u16) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the connection closes; errors surface on the next send.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    target: &Target,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(&target.path)
        .header(HOST, format!("127.0.0.1:{}", target.port))
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))?;
    exchange(sender, req).await
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// Polls `method path` on a fresh connection every millisecond until it
/// returns `expected`, for at most `limit`. Returns the time it took.
pub async fn wait_for_status(
    port: u16,
    method: &str,
    path: &str,
    expected: u16,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let target = Target {
        port,
        path: path.to_owned(),
    };
    let method = Method::from_bytes(method.as_bytes())?;
    let body = if method == Method::POST {
        Bytes::from_static(b"ping")
    } else {
        Bytes::new()
    };
    let mut last = String::from("no attempt");
    while started.elapsed() < limit {
        let attempt = async {
            let mut sender = connect(port).await?;
            send(&mut sender, method.clone(), &target, body.clone()).await
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok((status, _))) if status.as_u16() == expected => return Ok(started.elapsed()),
            Ok(Ok((status, body))) => last = format!("status {status}: {}", snippet(&body)),
            Ok(Err(e)) => last = format!("{e:#}"),
            Err(_) => last = "timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!(
        "{method} 127.0.0.1:{port}{path} did not return {expected} within {limit:?} (last: {last})"
    )
}
