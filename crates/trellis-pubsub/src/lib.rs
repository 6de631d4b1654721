//! The publish/subscribe building block.
//!
//! A [`PubSub`] broker stores published messages per topic and delivers them to consumer
//! groups (one group per subscribing app id), at least once:
//!
//! - [`PubSub::publish`] returns `Ok` only once the broker has durably stored the message
//!   (acknowledged it), so the runtime may answer the app's publish with 204.
//! - Every consumer group gets every message published to the topic after the group first
//!   subscribed, also those published while none of its instances was running.
//! - The instances of one group (several [`Subscription`]s with the same `consumer_group`,
//!   in one process or several) share the messages: each goes to one of them.
//! - A [`Delivery`] must be settled with [`Delivery::ack`] or [`Delivery::nack`]. One that is
//!   nacked, dropped unsettled, or held by a process that dies is delivered again, with
//!   [`Message::delivery_attempt`] one higher.
//!
//! Everything above this trait (CloudEvents, subscriptions from the app, routing, retries
//! and dead-letter topics, the HTTP delivery loop) is the runtime's and written once for
//! every broker. The crate knows nothing of HTTP or Dapr's wire JSON.
//!
//! Backends live in their own modules behind cargo features; every backend passes the same
//! [`conformance`] suite.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(feature = "jetstream")]
pub mod jetstream;
#[cfg(feature = "mqtt3")]
pub mod mqtt;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use trellis_core::Metadata;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    pub topic: String,
    /// The payload as the broker stores it (for Dapr: usually the CloudEvent's JSON).
    pub data: Bytes,
    pub content_type: Option<String>,
    /// Per-message metadata, delivered with the message where the broker can carry it.
    pub metadata: BTreeMap<String, String>,
    /// Drop the message if it has not been delivered within this long; `None` = never.
    pub ttl: Option<Duration>,
}

impl PublishRequest {
    /// A message without content type, metadata or TTL.
    pub fn new(topic: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            data: data.into(),
            content_type: None,
            metadata: BTreeMap::new(),
            ttl: None,
        }
    }

    /// The checks every backend applies before it talks to the broker.
    pub fn validate(&self) -> Result<(), PubSubError> {
        validate_topic(&self.topic)?;
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return Err(PubSubError::InvalidRequest("ttl must be positive".into()));
        }
        Ok(())
    }
}

/// A topic name must be non-empty; brokers may restrict it further.
pub fn validate_topic(topic: &str) -> Result<(), PubSubError> {
    if topic.is_empty() {
        return Err(PubSubError::InvalidRequest(
            "topic must not be empty".into(),
        ));
    }
    Ok(())
}

/// What to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub topic: String,
    /// The consumer group, normally the subscribing app's id: each group gets every
    /// message; the subscriptions of one group share them.
    pub consumer_group: String,
    /// Per-subscription metadata (the Subscription resource's `metadata`).
    pub metadata: BTreeMap<String, String>,
}

impl SubscribeRequest {
    pub fn new(topic: impl Into<String>, consumer_group: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            consumer_group: consumer_group.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The checks every backend applies before it talks to the broker.
    pub fn validate(&self) -> Result<(), PubSubError> {
        validate_topic(&self.topic)?;
        if self.consumer_group.is_empty() {
            return Err(PubSubError::InvalidRequest(
                "consumer group must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The broker's id for the message; the same on every delivery of it.
    pub id: String,
    pub topic: String,
    pub data: Bytes,
    pub content_type: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// When the broker stored it (brokers that do not record it give the receive time).
    pub published_at: SystemTime,
    /// 1 on the first delivery, one more on each redelivery.
    pub delivery_attempt: u32,
}

/// Settles one delivery with the broker. Implemented by each backend; used through
/// [`Delivery`].
#[async_trait]
pub trait Acker: Send {
    /// The message was handled: never deliver it to this group again.
    async fn ack(self: Box<Self>) -> Result<(), PubSubError>;

    /// The message was not handled: deliver it again, not before `redeliver_after` where
    /// the broker can delay redelivery (otherwise as soon as it can).
    async fn nack(self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError>;
}

/// A message handed to one subscriber, to be settled exactly once. Dropping it unsettled
/// counts as a failure: the broker delivers the message again (at once where it can tell,
/// otherwise when its lease or ack deadline runs out).
pub struct Delivery {
    pub message: Message,
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub async fn ack(self) -> Result<(), PubSubError> {
        self.acker.ack().await
    }

    pub async fn nack(self, redeliver_after: Duration) -> Result<(), PubSubError> {
        self.acker.nack(redeliver_after).await
    }
}

/// A stream of deliveries for one (topic, consumer group) subscriber.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery, waiting as long as it takes. `None` once the subscription is
    /// closed. An `Err` is a failure to receive (the broker is unreachable...); the
    /// subscription stays usable and the caller may keep calling `next`.
    ///
    /// Cancel-safe: dropping the future loses no message (at worst one is redelivered).
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>>;

    /// Stops receiving: messages received from the broker but not yet returned by
    /// [`Subscription::next`] go back to the group at once, and `next` returns `None` from
    /// now on. Deliveries already returned stay valid and should still be settled. The
    /// group itself stays: messages published from now on wait for its next subscriber.
    async fn close(&mut self) -> Result<(), PubSubError>;
}

/// What a broker can do, reported by the metadata API and checked by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// [`PubSub::bulk_publish`] is native (one round trip), not a loop of publishes.
    pub bulk_publish: bool,
    /// [`PublishRequest::ttl`] is honoured.
    pub ttl: bool,
    /// A single subscriber of a group receives one topic's messages in publish order
    /// (as long as none is nacked or redelivered).
    pub ordered: bool,
    /// A consumer group created by its first subscribe also gets what the topic already
    /// holds (Dapr's start for Redis Streams and JetStream), so a subscriber whose app
    /// comes up after its publisher's loses nothing. Brokers that drop messages nobody is
    /// bound to yet (RabbitMQ, MQTT) start a group at its first subscribe.
    pub replay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubSubError {
    /// The broker failed or is unreachable; the text is the broker's.
    #[error("{0}")]
    Backend(String),
    /// The request itself is unusable (empty topic, zero TTL...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The broker, subscription or delivery was closed.
    #[error("the pub/sub component is closed")]
    Closed,
}

/// A component setting that cannot be used is an unusable request to open it.
impl From<trellis_core::MetadataError> for PubSubError {
    fn from(err: trellis_core::MetadataError) -> Self {
        PubSubError::InvalidRequest(err.to_string())
    }
}

impl PubSubError {
    pub fn backend(err: impl std::fmt::Display) -> Self {
        PubSubError::Backend(err.to_string())
    }
}

/// The entries of a bulk publish that failed, by their index in the request; the others
/// were published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} of the messages failed to publish, the first (index {}): {}",
    .failed.len(),
    .failed.first().map_or(0, |f| f.0),
    .failed.first().map_or_else(String::new, |f| f.1.to_string()))]
pub struct BulkPublishError {
    pub failed: Vec<(usize, PubSubError)>,
}

/// A message broker. Dyn-compatible: the runtime holds `Arc<dyn PubSub>`.
#[async_trait]
pub trait PubSub: Send + Sync + std::fmt::Debug {
    fn capabilities(&self) -> Capabilities;

    /// Publishes one message; `Ok` once the broker has durably stored it.
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError>;

    /// Publishes several messages, in order. The default publishes them one by one; the
    /// error lists every entry that failed.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        let mut failed = Vec::new();
        for (i, req) in reqs.into_iter().enumerate() {
            if let Err(e) = self.publish(req).await {
                failed.push((i, e));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BulkPublishError { failed })
        }
    }

    /// Joins (creating it when new) the consumer group `req.consumer_group` of `req.topic`.
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError>;

    /// Checks the broker is reachable (used at start-up and by health reporting).
    async fn ping(&self) -> Result<(), PubSubError> {
        Ok(())
    }
}
