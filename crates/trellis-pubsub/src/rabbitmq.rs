//! Dapr's `pubsub.rabbitmq` on `lapin` (its tokio runtime).
//!
//! Dapr's layout: one fanout exchange per topic (named as the topic), one queue per
//! (consumer group, topic) named `<consumerID>-<topic>` bound to it, declared at the first
//! subscribe (durable by default) so messages published while the app is down queue up.
//! Messages are published persistent (`deliveryMode` 2) with publisher confirms: `publish`
//! returns `Ok` once the broker confirmed.
//!
//! Classic queues count no deliveries, so a nack is a republish of the message straight to
//! the group's queue (default exchange) with the attempt number in the header
//! `x-trellis-attempt`, after sleeping the nack's delay, and then an ack of the original
//! (at least once: a crash in between delivers it twice). A delivery dropped unsettled is
//! nacked with delay 0 the same way. A message the broker redelivers by itself (its channel
//! died) counts one attempt more than its header says.
//!
//! The connection is re-made on demand: after a broker restart the next publish reconnects.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::{
    Acker, Capabilities, Delivery, Message, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};

const ATTEMPT_HEADER: &str = "x-trellis-attempt";

fn backend(e: impl std::fmt::Display) -> PubSubError {
    PubSubError::Backend(e.to_string())
}

#[derive(Debug, Clone)]
struct Settings {
    uri: String,
    consumer_id: Option<String>,
    durable: bool,
    auto_delete: bool,
    auto_ack: bool,
    delivery_mode: u8,
    prefetch: u16,
    exchange_kind: ExchangeKind,
    publisher_confirm: bool,
}

struct Conn {
    conn: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

/// A RabbitMQ broker.
pub struct RabbitBroker {
    settings: Settings,
    conn: Mutex<Option<Conn>>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("consumer_id", &self.settings.consumer_id)
            .finish_non_exhaustive()
    }
}

async fn connect(uri: &str) -> Result<Connection, PubSubError> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| PubSubError::Backend("timed out connecting to rabbitmq".into()))?
    .map_err(backend)
}

impl RabbitBroker {
    /// Connects to the broker; fails when it does not answer.
    pub async fn open(md: &Metadata) -> Result<Self, PubSubError> {
        let uri = match (md.get("connectionString"), md.get("host")) {
            (Some(c), _) => c.to_string(),
            (None, Some(h)) => h.to_string(),
            (None, None) => {
                return Err(PubSubError::InvalidRequest(
                    "metadata connectionString (or host) is required".into(),
                ));
            }
        };
        if md.bool("enableTLS", false)? {
            return Err(PubSubError::InvalidRequest(
                "metadata enableTLS: tls connections to rabbitmq are not supported yet".into(),
            ));
        }
        let exchange_kind = match md.get("exchangeKind").unwrap_or("fanout") {
            k if k.eq_ignore_ascii_case("fanout") => ExchangeKind::Fanout,
            k if k.eq_ignore_ascii_case("topic") => ExchangeKind::Topic,
            k if k.eq_ignore_ascii_case("direct") => ExchangeKind::Direct,
            k => {
                return Err(PubSubError::InvalidRequest(format!(
                    "metadata exchangeKind: {k:?} is not fanout, topic or direct"
                )));
            }
        };
        // `requeueInFailure` is accepted; a nack always delivers again (the runtime's
        // retries and dead-letter topics decide when to give up).
        md.bool("requeueInFailure", false)?;
        let settings = Settings {
            uri,
            consumer_id: md.get("consumerID").map(str::to_string),
            durable: md.bool("durable", true)?,
            auto_delete: md.bool("deletedWhenUnused", false)?,
            auto_ack: md.bool("autoAck", false)?,
            delivery_mode: u8::try_from(md.usize("deliveryMode", 2, 0..=2)?).unwrap_or(2),
            prefetch: u16::try_from(md.usize("prefetchCount", 0, 0..=65_535)?).unwrap_or(0),
            exchange_kind,
            publisher_confirm: md.bool("publisherConfirm", true)?,
        };
        let broker = RabbitBroker {
            settings,
            conn: Mutex::new(None),
        };
        broker.ping().await?;
        Ok(broker)
    }

    async fn new_channel(&self, conn: &Connection) -> Result<Channel, PubSubError> {
        let channel = conn.create_channel().await.map_err(backend)?;
        if self.settings.publisher_confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(backend)?;
        }
        Ok(channel)
    }

    /// The publishing channel, reconnecting when the connection is gone.
    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, PubSubError>,
    ) -> Result<T, PubSubError> {
        let mut guard = self.conn.lock().await;
        let usable = guard
            .as_ref()
            .is_some_and(|c| c.conn.status().connected() && c.channel.status().connected());
        if !usable {
            *guard = None;
            let conn = connect(&self.settings.uri).await?;
            let channel = self.new_channel(&conn).await?;
            *guard = Some(Conn {
                conn,
                channel,
                declared: HashSet::new(),
            });
        }
        let Some(c) = guard.as_mut() else {
            return Err(PubSubError::Closed);
        };
        let res = f(c).await;
        if res.is_err() {
            // A failed call may leave the channel closed: start afresh next time.
            *guard = None;
        }
        res
    }

    fn exchange_opts(&self) -> ExchangeDeclareOptions {
        ExchangeDeclareOptions {
            durable: self.settings.durable,
            auto_delete: self.settings.auto_delete,
            ..ExchangeDeclareOptions::default()
        }
    }
}

async fn confirm(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
    wait: bool,
) -> Result<(), PubSubError> {
    let pending = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await
        .map_err(backend)?;
    if wait {
        let c = pending.await.map_err(backend)?;
        if c.is_nack() {
            return Err(PubSubError::Backend(
                "rabbitmq refused the message (nack)".into(),
            ));
        }
    }
    Ok(())
}

fn message_id() -> String {
    format!("{:016x}", random_u64())
}

#[async_trait]
impl PubSub for RabbitBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bulk_publish: false,
            ttl: true,
            ordered: true,
            // An exchange drops what no queue is bound to yet, and a group's queue is
            // declared at its first subscribe (as in Dapr).
            replay: false,
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        req.validate()?;
        let mut headers = FieldTable::default();
        for (k, v) in &req.metadata {
            headers.insert(
                ShortString::from(k.as_str()),
                AMQPValue::LongString(v.as_str().into()),
            );
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut props = BasicProperties::default()
            .with_delivery_mode(self.settings.delivery_mode)
            .with_message_id(ShortString::from(message_id()))
            .with_timestamp(now)
            .with_headers(headers);
        if let Some(ct) = &req.content_type {
            props = props.with_content_type(ShortString::from(ct.as_str()));
        }
        if let Some(ttl) = req.ttl {
            props = props.with_expiration(ShortString::from(ttl.as_millis().max(1).to_string()));
        }
        let opts = self.exchange_opts();
        let kind = self.settings.exchange_kind.clone();
        let wait = self.settings.publisher_confirm;
        self.with_conn(async |c: &mut Conn| {
            if !c.declared.contains(&req.topic) {
                c.channel
                    .exchange_declare(
                        ShortString::from(req.topic.as_str()),
                        kind,
                        opts,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(backend)?;
                c.declared.insert(req.topic.clone());
            }
            confirm(&c.channel, &req.topic, "", &req.data, props, wait).await
        })
        .await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        req.validate()?;
        let group = self
            .settings
            .consumer_id
            .clone()
            .unwrap_or_else(|| req.consumer_group.clone());
        let queue = format!("{group}-{}", req.topic);
        let conn = connect(&self.settings.uri).await?;
        let channel = self.new_channel(&conn).await?;
        channel
            .exchange_declare(
                ShortString::from(req.topic.as_str()),
                self.settings.exchange_kind.clone(),
                self.exchange_opts(),
                FieldTable::default(),
            )
            .await
            .map_err(backend)?;
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    durable: self.settings.durable,
                    auto_delete: self.settings.auto_delete,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(backend)?;
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(req.topic.as_str()),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(backend)?;
        if self.settings.prefetch > 0 {
            channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await
                .map_err(backend)?;
        }
        let tag = format!("trellis-{}", message_id());
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions {
                    no_ack: self.settings.auto_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(backend)?;
        Ok(Box::new(RabbitSubscription {
            _conn: Arc::new(conn),
            channel,
            consumer: Some(consumer),
            tag,
            topic: req.topic,
            queue,
            auto_ack: self.settings.auto_ack,
            confirm: self.settings.publisher_confirm,
        }))
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.with_conn(async |_c: &mut Conn| Ok(())).await
    }
}

struct RabbitSubscription {
    _conn: Arc<Connection>,
    channel: Channel,
    consumer: Option<lapin::Consumer>,
    tag: String,
    topic: String,
    queue: String,
    auto_ack: bool,
    confirm: bool,
}

fn header_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        other => format!("{other:?}"),
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        let consumer = self.consumer.as_mut()?;
        let d = match consumer.next().await {
            None => {
                self.consumer = None;
                return None;
            }
            Some(Err(e)) => return Some(Err(backend(e))),
            Some(Ok(d)) => d,
        };
        let props = d.properties.clone();
        let mut metadata = BTreeMap::new();
        let mut attempt = 1u32;
        if let Some(h) = props.headers() {
            for (k, v) in h.inner() {
                if k.as_str() == ATTEMPT_HEADER {
                    attempt = header_text(v).parse().unwrap_or(1);
                } else {
                    metadata.insert(k.as_str().to_string(), header_text(v));
                }
            }
        }
        if d.redelivered {
            attempt += 1;
        }
        let id = props
            .message_id()
            .as_ref()
            .map_or_else(|| format!("{}", d.delivery_tag), |s| s.as_str().to_string());
        let published_at = props.timestamp().map_or_else(SystemTime::now, |s| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s)
        });
        let message = Message {
            id,
            topic: self.topic.clone(),
            data: Bytes::from(d.data.clone()),
            content_type: props
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_string()),
            metadata,
            published_at,
            delivery_attempt: attempt,
        };
        Some(Ok(Delivery {
            message,
            acker: Box::new(RabbitAcker {
                channel: self.channel.clone(),
                delivery: if self.auto_ack { None } else { Some(d) },
                queue: self.queue.clone(),
                attempt,
                confirm: self.confirm,
            }),
        }))
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        if let Some(mut consumer) = self.consumer.take() {
            // Stop consuming, keeping the channel open for deliveries still to be settled;
            // what the broker sent but we did not return goes back to the queue.
            let res = self
                .channel
                .basic_cancel(
                    ShortString::from(self.tag.as_str()),
                    BasicCancelOptions::default(),
                )
                .await
                .map_err(backend);
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(50), consumer.next()).await
            {
                let _ = d
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            }
            res?;
        }
        Ok(())
    }
}

struct RabbitAcker {
    channel: Channel,
    delivery: Option<lapin::message::Delivery>,
    queue: String,
    attempt: u32,
    confirm: bool,
}

async fn redeliver(
    channel: Channel,
    d: lapin::message::Delivery,
    queue: String,
    attempt: u32,
    confirm_publish: bool,
    after: Duration,
) -> Result<(), PubSubError> {
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(ATTEMPT_HEADER),
        AMQPValue::LongString((attempt + 1).to_string().as_str().into()),
    );
    let props = d.properties.clone().with_headers(headers);
    confirm(&channel, "", &queue, &d.data, props, confirm_publish).await?;
    d.ack(BasicAckOptions::default()).await.map_err(backend)?;
    Ok(())
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        match self.delivery.take() {
            Some(d) => d
                .ack(BasicAckOptions::default())
                .await
                .map_err(backend)
                .map(drop),
            None => Ok(()),
        }
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        match self.delivery.take() {
            Some(d) => {
                redeliver(
                    self.channel.clone(),
                    d,
                    self.queue.clone(),
                    self.attempt,
                    self.confirm,
                    redeliver_after,
                )
                .await
            }
            None => Ok(()),
        }
    }
}

impl Drop for RabbitAcker {
    fn drop(&mut self) {
        let Some(d) = self.delivery.take() else {
            return;
        };
        let (channel, queue, attempt, confirm) = (
            self.channel.clone(),
            self.queue.clone(),
            self.attempt,
            self.confirm,
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = redeliver(channel, d, queue, attempt, confirm, Duration::ZERO).await;
            });
        }
    }
}

/// A random number for message ids and consumer tags, without a dependency.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
