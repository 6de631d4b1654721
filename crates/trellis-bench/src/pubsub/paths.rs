//! The publishing side of `trellis-bench pubsub`: one [`Client`] per way of publishing
//! (through a sidecar's HTTP API, to the embedded broker in process, to JetStream with
//! async-nats), and what the sidecars need (their component, a live subscription).
//!
//! Every client publishes either one message per call (the fixed-rate phases) or a chunk
//! of `bulk` messages per call (the throughput phases, where call `seq` carries messages
//! `seq * bulk ..`), so the same load machinery (`load::run_clients`, `load::fill`) drives
//! all of them.
//!
//! The direct paths store what a sidecar would store: a CloudEvent envelope around the
//! JSON payload, of about the same size and fields as the one `cloudevent::wrap` builds,
//! with the same `Content-Type` header on JetStream. So direct and sidecar paths move the
//! same bytes through the broker.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use async_nats::jetstream;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use trellis_pubsub::sqlite::SqliteBroker;
use trellis_pubsub::{PubSub, PublishRequest};

use super::app::{now_us, payload};
use crate::load::{Call, Client, HttpClient};

const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// What one call publishes: message `seq` alone, or messages `seq*bulk .. seq*bulk+bulk`
/// (capped at `total`).
#[derive(Clone, Copy)]
pub struct Shape {
    pub size: usize,
    pub bulk: u64,
    pub total: u64,
}

impl Shape {
    pub fn single(size: usize) -> Self {
        Self {
            size,
            bulk: 1,
            total: u64::MAX,
        }
    }

    /// The sequence numbers call `seq` publishes.
    fn range(self, seq: u64) -> std::ops::Range<u64> {
        let from = seq.saturating_mul(self.bulk);
        from..from.saturating_add(self.bulk).min(self.total)
    }

    /// Calls needed to publish `total` messages.
    pub fn calls(self) -> u64 {
        self.total.div_ceil(self.bulk)
    }
}

/// The CloudEvent a sidecar would store for `payload` published to `topic`.
pub fn cloud_event(pubsub: &str, topic: &str, seq: u64, data: &str) -> String {
    // Fixed-width stand-ins for the id, time and trace context the sidecar generates,
    // so the envelope has the sidecar's size; the bench never reads them.
    format!(
        concat!(
            r#"{{"data":{data},"datacontenttype":"application/json","id":"00000000-0000-4000-8000-{seq:012}","#,
            r#""pubsubname":"{pubsub}","source":"bench-pub","specversion":"1.0","time":"2026-01-01T00:00:00.000000Z","#,
            r#""topic":"{topic}","traceid":"00-00000000000000000000000000000000-0000000000000000-01","#,
            r#""traceparent":"00-00000000000000000000000000000000-0000000000000000-01","tracestate":"","#,
            r#""type":"com.dapr.event.sent"}}"#
        ),
        data = data,
        seq = seq % 1_000_000_000_000,
        pubsub = pubsub,
        topic = topic,
    )
}

// ---- through a sidecar ---------------------------------------------------------------------

/// Publishes through a sidecar's HTTP API: `POST /v1.0/publish/{pubsub}/{topic}` with the
/// JSON payload (one message per call), or `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}`
/// with `bulk` entries. Expects 204. The payload's timestamp is taken when the call is
/// built, right before it is sent.
pub fn http_publisher(
    port: u16,
    pubsub: &str,
    topic: &str,
    shape: Shape,
) -> Result<HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static + use<>>> {
    let single = Uri::try_from(format!("/v1.0/publish/{pubsub}/{topic}"))?;
    let bulk = Uri::try_from(format!("/v1.0-alpha1/publish/bulk/{pubsub}/{topic}"))?;
    Ok(HttpClient::new(port, move |seq| {
        let json = HeaderValue::from_static("application/json");
        if shape.bulk == 1 {
            return Call {
                method: Method::POST,
                uri: single.clone(),
                body: Bytes::from(payload(seq, now_us(), shape.size)),
                content_type: json,
                status: StatusCode::NO_CONTENT,
                body_len: None,
            };
        }
        let range = shape.range(seq);
        let mut body =
            String::with_capacity((range.end - range.start) as usize * (shape.size + 64));
        body.push('[');
        let ts = now_us();
        for (i, s) in range.enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"entryId":"{s}","event":{},"contentType":"application/json"}}"#,
                payload(s, ts, shape.size)
            ));
        }
        body.push(']');
        Call {
            method: Method::POST,
            uri: bulk.clone(),
            body: Bytes::from(body),
            content_type: json,
            status: StatusCode::NO_CONTENT,
            body_len: None,
        }
    }))
}

/// Publishes one probe message (see [`super::app::PROBE_SEQ`]) through a sidecar.
pub async fn probe_via_sidecar(port: u16, pubsub: &str, topic: &str) -> Result<()> {
    let mut c = http_publisher(port, pubsub, topic, Shape::single(64))?;
    c.call(super::app::PROBE_SEQ).await
}

// ---- the embedded broker in process --------------------------------------------------------

/// Publishes to a `SqliteBroker` in this process (`publish`, or `bulk_publish` of a chunk).
pub struct SqlitePublisher {
    pub broker: Arc<SqliteBroker>,
    pub topic: String,
    pub shape: Shape,
}

impl SqlitePublisher {
    fn request(&self, seq: u64, ts: u64) -> PublishRequest {
        let data = cloud_event(
            "pubsub",
            &self.topic,
            seq,
            &payload(seq, ts, self.shape.size),
        );
        let mut req = PublishRequest::new(self.topic.clone(), data);
        req.content_type = Some(CLOUDEVENT_CONTENT_TYPE.to_owned());
        req
    }
}

impl Client for SqlitePublisher {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let ts = now_us();
        if self.shape.bulk == 1 {
            return Ok(self.broker.publish(self.request(seq, ts)).await?);
        }
        let reqs = self.shape.range(seq).map(|s| self.request(s, ts)).collect();
        Ok(self.broker.bulk_publish(reqs).await?)
    }
}

// ---- JetStream -----------------------------------------------------------------------------

/// Publishes to JetStream and waits for the stream's ack, as the `pubsub.jetstream`
/// component does. A chunk is published whole first, then its acks are awaited (the
/// natural way to publish many messages with async-nats).
pub struct JsPublisher {
    pub js: jetstream::Context,
    pub subject: String,
    pub shape: Shape,
}

impl JsPublisher {
    async fn send(&self, seq: u64, ts: u64) -> Result<jetstream::context::PublishAckFuture> {
        let data = cloud_event(
            "jetstream",
            &self.subject,
            seq,
            &payload(seq, ts, self.shape.size),
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", CLOUDEVENT_CONTENT_TYPE);
        self.js
            .publish_with_headers(self.subject.clone(), headers, Bytes::from(data))
            .await
            .map_err(|e| anyhow!("publishing: {e}"))
    }
}

impl Client for JsPublisher {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let ts = now_us();
        let mut acks = Vec::new();
        for s in self.shape.range(seq) {
            acks.push(self.send(s, ts).await?);
        }
        for ack in acks {
            ack.await.map_err(|e| anyhow!("waiting for the ack: {e}"))?;
        }
        Ok(())
    }
}

// ---- sidecars ------------------------------------------------------------------------------

/// Publishes probes through `sidecar` until one reaches the app on `topic` (so the
/// subscriber's consumer group exists and its loop runs), for at most `limit`.
pub async fn wait_subscribed(
    board: &super::app::Board,
    port: u16,
    pubsub: &str,
    topic: &str,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut last_err = None;
    while started.elapsed() < limit {
        if let Err(e) = probe_via_sidecar(port, pubsub, topic).await {
            last_err = Some(e);
        }
        for _ in 0..20 {
            if board.probed(topic) {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Err(match last_err {
        Some(e) => e.context(format!(
            "no probe reached the app on {topic} within {limit:?}"
        )),
        None => anyhow!("no probe reached the app on {topic} within {limit:?}"),
    })
    .context("the subscription did not become live")
}

/// A component file for a `pubsub.jetstream` component named `name`.
pub fn jetstream_component(name: &str, nats_url: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: pubsub.jetstream\n  version: v1\n  metadata:\n  - name: natsURL\n    value: {}\n",
        serde_json::to_string(nats_url).unwrap_or_default()
    )
}

/// Writes `yaml` as the only file of a fresh resources dir `dir`.
pub fn resources_dir(dir: &Path, yaml: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("pubsub.yaml"), yaml)
        .with_context(|| format!("writing {}", dir.display()))
}
