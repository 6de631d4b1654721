//! The load generator: persistent HTTP/1.1 keep-alive connections driven
//! either on a fixed open-loop schedule or back to back (closed loop).
//!
//! Latencies go into an HDR histogram with microsecond resolution.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
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

    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
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

/// Runs one phase: `connections` tasks, each owning one keep-alive
/// connection, until `schedule.end`. Prints a progress line per second.
pub async fn run(
    label: &str,
    target: &Target,
    mode: Mode,
    connections: usize,
    body: Bytes,
    schedule: Schedule,
) -> Result<Outcome> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for k in 0..connections {
        let worker = Worker {
            target: target.clone(),
            body: body.clone(),
            schedule,
            done: Arc::clone(&done),
            sender: None,
        };
        tasks.push(match mode {
            Mode::FixedRate(rate) => tokio::spawn(worker.fixed_rate(k, connections, rate)),
            Mode::MaxThroughput => tokio::spawn(worker.closed_loop()),
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

/// One connection's share of the load.
struct Worker {
    target: Target,
    body: Bytes,
    schedule: Schedule,
    done: Arc<AtomicU64>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Worker {
    /// Open loop: connection `k` of `n` owns requests k, k+n, k+2n, ... of a
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
            let res = self.exchange().await;
            let latency = from.elapsed();
            self.done.fetch_add(1, Ordering::Relaxed);
            if scheduled >= self.schedule.measure_from {
                out.record(res, latency);
            }
        }
        Ok(out)
    }

    /// Closed loop: back-to-back requests on this connection until the end.
    async fn closed_loop(mut self) -> Result<Outcome> {
        let mut out = Outcome::empty(self.schedule.measured())?;
        loop {
            let sent = Instant::now();
            if sent >= self.schedule.end {
                break;
            }
            let res = self.exchange().await;
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

    /// One POST on this worker's connection, (re)connecting if needed. Any
    /// failure drops the connection so the next request starts clean.
    async fn exchange(&mut self) -> Result<()> {
        let res = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let sender = match &mut self.sender {
                Some(s) if !s.is_closed() => s,
                slot => slot.insert(connect(self.target.port).await?),
            };
            let (status, body) =
                send(sender, Method::POST, &self.target, self.body.clone()).await?;
            if status != StatusCode::OK {
                bail!("status {status}: {}", snippet(&body));
            }
            if body.len() != self.body.len() {
                bail!("echoed {} bytes, sent {}", body.len(), self.body.len());
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(anyhow!("no response within {REQUEST_TIMEOUT:?}")));
        if res.is_err() {
            self.sender = None;
        }
        res
    }
}

/// Opens a keep-alive HTTP/1.1 connection to 127.0.0.1:`port`.
async fn connect(port: u16) -> Result<SendRequest<Full<Bytes>>> {
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
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
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
