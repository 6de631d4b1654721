//! NATS JetStream (`pubsub.jetstream`), with the `async-nats` client.
//!
//! - A topic is a NATS subject, used verbatim (so plain NATS publishers interoperate).
//! - Streams: with `streamName`, every topic goes to that one stream; it is created on first
//!   use (file storage, limits retention) with the topic as its subject, and each further
//!   topic is added to its subjects (unless a wildcard subject of the stream covers it
//!   already). Without `streamName`, the stream that already captures the subject is used,
//!   and if there is none, one stream per topic is created, named `TRELLIS_<topic>_<hash>`.
//!   Per-topic streams are the default because adding subjects to one shared stream is a
//!   read-modify-write of the stream's config, which two processes can race; a stream with
//!   the wildcard `>` would capture NATS's own reply subjects.
//! - A consumer group is a durable pull consumer of the topic's stream, named after the
//!   group (the app id, or `durableName` when set) and a hash of the topic. It survives the
//!   subscribers, so the group gets what was published while it was down; all instances of
//!   the group pull from it, so they share the messages. A new consumer starts at the
//!   beginning of what the stream holds for its topic (`deliverPolicy` `all`, Dapr's
//!   default), so events published before the subscriber came up are not lost; `new`
//!   starts it at its first subscribe.
//! - Ack and nack are JetStream's `+ACK` and `-NAK` (with the nack's delay); a delivery
//!   dropped unsettled is nacked at once; one held by a process that dies comes back after
//!   `ackWait`. [`Message::delivery_attempt`] is JetStream's delivery count.
//! - Publishing waits for the stream's PubAck, so `Ok` means stored. Content type and
//!   metadata travel as headers (`Content-Type`, `Trellis-Metadata` as JSON).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};

use crate::{
    Acker, BulkPublishError, Capabilities, Delivery, Message, Metadata, PubSub, PubSubError,
    PublishRequest, SubscribeRequest, Subscription,
};

const CONTENT_TYPE: &str = "Content-Type";
const METADATA: &str = "Trellis-Metadata";

/// A JetStream broker connection.
pub struct JetStreamBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    stream_name: Option<String>,
    durable_name: Option<String>,
    ack_wait: Duration,
    max_deliver: i64,
    deliver_policy: consumer::DeliverPolicy,
    memory_storage: bool,
    /// Topic -> the stream that captures it, once ensured.
    streams: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for JetStreamBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBroker")
            .field("stream_name", &self.stream_name)
            .finish_non_exhaustive()
    }
}

/// How long a publish waits for the client's first connection before failing.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(5);

fn be(e: impl std::fmt::Display) -> PubSubError {
    PubSubError::backend(e)
}

/// A short stable hash (FNV-1a) for names derived from topics.
fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Keeps the characters stream and consumer names may hold.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl JetStreamBroker {
    /// Connects to `natsURL` (default `nats://127.0.0.1:4222`).
    pub async fn open(md: &Metadata) -> Result<Self, PubSubError> {
        let url = md.get("natsURL").unwrap_or("nats://127.0.0.1:4222");
        let ack_wait = md.positive_duration("ackWait", Duration::from_secs(30))?;
        let max_deliver = md.usize("maxDeliver", 0, 0..=1_000_000)?;
        let deliver_policy = match md.get("deliverPolicy").map(str::to_ascii_lowercase) {
            None => consumer::DeliverPolicy::All,
            Some(p) => match p.as_str() {
                "new" => consumer::DeliverPolicy::New,
                "all" => consumer::DeliverPolicy::All,
                "last" => consumer::DeliverPolicy::Last,
                "lastpersubject" | "last_per_subject" => consumer::DeliverPolicy::LastPerSubject,
                _ => {
                    return Err(PubSubError::InvalidRequest(format!(
                        "metadata deliverPolicy: {p:?} is not one of new, all, last, lastPerSubject"
                    )));
                }
            },
        };
        let mut opts = async_nats::ConnectOptions::new()
            .request_timeout(Some(Duration::from_secs(5)))
            .retry_on_initial_connect();
        if let Some(name) = md.get("name") {
            opts = opts.name(name);
        }
        if let Some(token) = md.get("token") {
            opts = opts.token(token.to_string());
        }
        let client = tokio::time::timeout(Duration::from_secs(10), opts.connect(url))
            .await
            .map_err(|_| PubSubError::Backend(format!("connecting to {url} timed out")))?
            .map_err(be)?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            stream_name: md.get("streamName").map(str::to_string),
            durable_name: md.get("durableName").map(str::to_string),
            ack_wait,
            // 0 (the default): no limit.
            max_deliver: if max_deliver == 0 {
                -1
            } else {
                i64::try_from(max_deliver).unwrap_or(-1)
            },
            deliver_policy,
            memory_storage: md.bool("memoryStorage", false)?,
            streams: Mutex::new(HashMap::new()),
        })
    }

    fn storage(&self) -> stream::StorageType {
        if self.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        }
    }

    /// The stream capturing `topic`, created or extended when needed.
    async fn ensure_stream(&self, topic: &str) -> Result<String, PubSubError> {
        let mut streams = self.streams.lock().await;
        if let Some(name) = streams.get(topic) {
            return Ok(name.clone());
        }
        let name = match &self.stream_name {
            Some(name) => {
                let config = stream::Config {
                    name: name.clone(),
                    subjects: vec![topic.to_string()],
                    storage: self.storage(),
                    ..Default::default()
                };
                let mut st = self.js.get_or_create_stream(config).await.map_err(be)?;
                let info = st.info().await.map_err(be)?.clone();
                let covered = info.config.subjects.iter().any(|s| s == topic)
                    || self
                        .js
                        .stream_by_subject(topic)
                        .await
                        .is_ok_and(|s| &s == name);
                if !covered {
                    let mut config = info.config;
                    config.subjects.push(topic.to_string());
                    self.js.update_stream(config).await.map_err(be)?;
                }
                name.clone()
            }
            None => match self.js.stream_by_subject(topic).await {
                Ok(name) => name,
                Err(_) => {
                    let name = format!("TRELLIS_{}_{}", sanitize(topic), &hash(&[topic])[..8]);
                    let config = stream::Config {
                        name: name.clone(),
                        subjects: vec![topic.to_string()],
                        storage: self.storage(),
                        ..Default::default()
                    };
                    self.js.get_or_create_stream(config).await.map_err(be)?;
                    name
                }
            },
        };
        streams.insert(topic.to_string(), name.clone());
        Ok(name)
    }

    /// Waits (a bounded while) for the first connection of a client just opened: `open`
    /// returns before it is made, so that a sidecar starts while NATS is down, and the
    /// first publish of a freshly started app must not fail for that. Once the client has
    /// been connected this returns at once; a later disconnect fails publishes at once.
    async fn first_connect(&self) {
        let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT;
        while self.client.connection_state() == async_nats::connection::State::Pending
            && tokio::time::Instant::now() < deadline
        {
            // Only ever at start-up, so a short poll costs nothing worth an event hook.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Validates and sends one message; the returned future resolves with the stream's ack.
    async fn send(
        &self,
        req: PublishRequest,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, PubSubError> {
        req.validate()?;
        self.first_connect().await;
        // While disconnected the client would buffer the message and send it after the
        // reconnect, long after this call timed out: fail at once instead.
        if let state @ (async_nats::connection::State::Disconnected
        | async_nats::connection::State::Pending) = self.client.connection_state()
        {
            return Err(PubSubError::Backend(format!(
                "not connected to the NATS server ({state})"
            )));
        }
        self.ensure_stream(&req.topic).await?;
        let headers = Self::headers(&req)?;
        self.js
            .publish_with_headers(req.topic, headers, req.data)
            .await
            .map_err(be)
    }

    fn headers(req: &PublishRequest) -> Result<HeaderMap, PubSubError> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = &req.content_type {
            headers.insert(CONTENT_TYPE, ct.as_str());
        }
        if !req.metadata.is_empty() {
            let json = serde_json::to_string(&req.metadata).map_err(be)?;
            headers.insert(METADATA, json.as_str());
        }
        Ok(headers)
    }
}

#[async_trait]
impl PubSub for JetStreamBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bulk_publish: false,
            ttl: false,
            ordered: true,
            replay: matches!(self.deliver_policy, consumer::DeliverPolicy::All),
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        self.send(req).await?.await.map_err(be)?;
        Ok(())
    }

    /// Sends every message before awaiting any acknowledgement: one connection keeps them
    /// in order, and the stream's acks come back pipelined instead of one round trip each.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        let mut failed = Vec::new();
        let mut acks = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            match self.send(req).await {
                Ok(ack) => acks.push((i, ack)),
                Err(e) => failed.push((i, e)),
            }
        }
        for (i, ack) in acks {
            if let Err(e) = ack.await {
                failed.push((i, be(e)));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            failed.sort_by_key(|(i, _)| *i);
            Err(BulkPublishError { failed })
        }
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        req.validate()?;
        let stream_name = self.ensure_stream(&req.topic).await?;
        let group = self.durable_name.as_deref().unwrap_or(&req.consumer_group);
        let name = format!("{}-{}", sanitize(group), &hash(&[group, &req.topic])[..12]);
        let st = self.js.get_stream(&stream_name).await.map_err(be)?;
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            deliver_policy: self.deliver_policy,
            filter_subject: req.topic.clone(),
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            st.get_or_create_consumer(&name, config).await.map_err(be)?;
        // One pulling task per subscriber: it fetches what is available, up to
        // `PULL_BATCH` at a time, and waits until `next` takes them, so at most two batches
        // are held ahead (nacked at close). One message per pull request would cost the
        // server a request per message.
        let (tx, rx) = mpsc::channel(PULL_BATCH);
        tokio::spawn(pull(consumer, tx));
        Ok(Box::new(JetStreamSubscription { rx: Some(rx) }))
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => {
                // A PING/PONG round trip (the account-info request's reply format differs
                // between server versions).
                tokio::time::timeout(Duration::from_secs(5), self.client.flush())
                    .await
                    .map_err(|_| PubSubError::Backend("NATS ping timed out".into()))?
                    .map_err(be)
            }
            state => Err(PubSubError::Backend(format!("NATS connection is {state}"))),
        }
    }
}

type Pulled = Result<jetstream::Message, PubSubError>;

/// Most messages one pull request asks for.
const PULL_BATCH: usize = 64;

async fn pull(consumer: consumer::PullConsumer, tx: mpsc::Sender<Pulled>) {
    // Each pull request runs to its end (a message or `expires`) even after the subscription
    // closed: abandoning an open request would let the server hand a message to a request
    // nobody reads (lost until ackWait, and nats-server 2.9 then resets its delivery count).
    while !tx.is_closed() {
        let batch = consumer
            .fetch()
            .max_messages(PULL_BATCH)
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                if tx.send(Err(be(e))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(item) = batch.next().await {
            let failed = item.is_err();
            if let Err(mpsc::error::SendError(item)) = tx.send(item.map_err(be)).await {
                // The subscription is gone: the message goes back to the group.
                if let Ok(msg) = item {
                    drop(JetStreamAcker { msg: Some(msg) });
                }
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
}

struct JetStreamSubscription {
    rx: Option<mpsc::Receiver<Pulled>>,
}

impl JetStreamSubscription {
    /// Stops pulling and nacks what was pulled but not returned.
    fn stop(&mut self) {
        // The pulling task ends after its current pull request; what that brings is nacked.
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            while let Ok(item) = rx.try_recv() {
                if let Ok(msg) = item {
                    drop(JetStreamAcker { msg: Some(msg) });
                }
            }
        }
    }
}

impl Drop for JetStreamSubscription {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl Subscription for JetStreamSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        let rx = self.rx.as_mut()?;
        match rx.recv().await? {
            Ok(msg) => Some(to_delivery(msg)),
            Err(e) => Some(Err(e)),
        }
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        self.stop();
        Ok(())
    }
}

fn to_delivery(msg: jetstream::Message) -> Result<Delivery, PubSubError> {
    let info = msg.info().map_err(be)?;
    let id = format!("{}:{}", info.stream, info.stream_sequence);
    let delivery_attempt = u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX);
    let published_at = SystemTime::from(info.published);
    let mut content_type = None;
    let mut metadata = BTreeMap::new();
    if let Some(headers) = &msg.headers {
        content_type = headers.get(CONTENT_TYPE).map(|v| v.as_str().to_string());
        if let Some(json) = headers.get(METADATA) {
            metadata = serde_json::from_str(json.as_str()).map_err(be)?;
        }
    }
    let message = Message {
        id,
        topic: msg.subject.to_string(),
        data: msg.payload.clone(),
        content_type,
        metadata,
        published_at,
        delivery_attempt,
    };
    Ok(Delivery {
        message,
        acker: Box::new(JetStreamAcker { msg: Some(msg) }),
    })
}

struct JetStreamAcker {
    msg: Option<jetstream::Message>,
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        let msg = self.msg.take().ok_or(PubSubError::Closed)?;
        msg.double_ack().await.map_err(be)
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        let msg = self.msg.take().ok_or(PubSubError::Closed)?;
        let delay = (!redeliver_after.is_zero()).then_some(redeliver_after);
        msg.ack_with(AckKind::Nak(delay)).await.map_err(be)
    }
}

impl Drop for JetStreamAcker {
    fn drop(&mut self) {
        if let Some(msg) = self.msg.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            });
        }
    }
}
