//! Dapr's `pubsub.redis` on Redis Streams with consumer groups, through the `redis` crate's
//! `ConnectionManager` (it reconnects by itself when the server comes back).
//!
//! - A topic is a stream; publish is `XADD topic [MAXLEN ~ n] * data <payload>` (the field
//!   Dapr writes), plus `contentType` and one `meta.<name>` field per metadata entry.
//! - A consumer group is a Redis group, created at its first subscribe with id `0` and
//!   `MKSTREAM` (as Dapr does), and kept: it gets what the stream already holds and
//!   everything published from then on, also while no member runs. Each subscription is a consumer of its own (`<consumerID>-<random>`).
//! - Ack is `XACK`. A nacked (or dropped) delivery stays pending; its idle time is set so
//!   that it becomes claimable after the nack's delay (`XCLAIM ... IDLE ... JUSTID`, which
//!   does not count a delivery). Every `redeliverInterval` a subscription looks for entries
//!   pending longer than `processingTimeout` (`XPENDING ... IDLE`) and claims them
//!   (`XCLAIM`), as Dapr does; the attempt number is Redis' delivery counter.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Value};
use trellis_core::redis::{Connected, RedisSettings};

use crate::{
    Acker, Capabilities, Delivery, Message, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};

const META_PREFIX: &str = "meta.";

fn backend(e: RedisError) -> PubSubError {
    PubSubError::Backend(e.to_string())
}

#[derive(Debug, Clone)]
struct Settings {
    consumer_id: Option<String>,
    max_len: Option<usize>,
    processing_timeout: Duration,
    redeliver_interval: Duration,
    queue_depth: usize,
}

/// A Redis Streams broker.
#[derive(Clone)]
pub struct RedisBroker {
    client: Client,
    conn: ConnectionManager,
    config: ConnectionManagerConfig,
    settings: Settings,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// See [`trellis_core::redis::retry_refused`].
async fn retry_refused<T, F, Fut>(op: F) -> Result<T, PubSubError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    trellis_core::redis::retry_refused(op)
        .await
        .map_err(backend)
}

impl RedisBroker {
    /// Connects to `redisHost`; fails when Redis does not answer.
    pub async fn open(md: &Metadata) -> Result<Self, PubSubError> {
        let redis = RedisSettings::from_metadata(md)?;
        let max_len = Some(md.u64(["maxLenApprox", "maxLen"], 0)?)
            .filter(|n| *n > 0)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let settings = Settings {
            consumer_id: md.get("consumerID").map(str::to_string),
            max_len,
            processing_timeout: md
                .positive_duration("processingTimeout", Duration::from_secs(60))?,
            redeliver_interval: md
                .positive_duration("redeliverInterval", Duration::from_secs(15))?,
            queue_depth: md.usize("queueDepth", 100, 1..=100_000)?,
        };
        // `concurrency` is the runtime's business (how many deliveries it handles at once);
        // it is validated here so a typo is reported.
        md.usize("concurrency", 10, 1..=100_000)?;
        let Connected {
            client,
            config,
            conn,
        } = redis.connect().await.map_err(PubSubError::backend)?;
        Ok(RedisBroker {
            client,
            conn,
            config,
            settings,
        })
    }

    fn xadd(&self, req: &PublishRequest) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&req.topic);
        if let Some(n) = self.settings.max_len {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*").arg("data").arg(req.data.as_ref());
        if let Some(ct) = &req.content_type {
            cmd.arg("contentType").arg(ct);
        }
        for (k, v) in &req.metadata {
            cmd.arg(format!("{META_PREFIX}{k}")).arg(v);
        }
        cmd
    }
}

#[async_trait]
impl PubSub for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bulk_publish: false,
            ttl: false,
            ordered: true,
            replay: true,
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        req.validate()?;
        let cmd = self.xadd(&req);
        retry_refused(|| {
            let mut conn = self.conn.clone();
            let cmd = cmd.clone();
            async move { cmd.query_async::<Value>(&mut conn).await }
        })
        .await?;
        Ok(())
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        req.validate()?;
        let group = req.consumer_group.clone();
        create_group(&self.conn, &req.topic, &group).await?;
        // A connection of its own: XREADGROUP BLOCK would hold up a shared one.
        let read = ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            .await
            .map_err(backend)?;
        let consumer = format!(
            "{}-{:016x}",
            self.settings
                .consumer_id
                .as_deref()
                .unwrap_or(&req.consumer_group),
            random_u64()
        );
        Ok(Box::new(RedisSubscription {
            conn: self.conn.clone(),
            read,
            topic: req.topic,
            group,
            consumer,
            settings: self.settings.clone(),
            buffer: VecDeque::new(),
            next_reclaim: tokio::time::Instant::now(),
            closed: false,
        }))
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        retry_refused(|| {
            let mut conn = self.conn.clone();
            async move { redis::cmd("PING").query_async::<Value>(&mut conn).await }
        })
        .await
        .map(drop)
    }
}

async fn create_group(
    conn: &ConnectionManager,
    topic: &str,
    group: &str,
) -> Result<(), PubSubError> {
    let res = retry_refused(|| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(topic)
                .arg(group)
                // From the start of the stream, as Dapr: events published before the
                // subscriber's app came up are not lost.
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<Value>(&mut conn)
                .await
        }
    })
    .await;
    match res {
        Err(PubSubError::Backend(e)) if e.contains("BUSYGROUP") => Ok(()),
        other => other.map(drop),
    }
}

/// One entry read from the stream.
struct Entry {
    id: String,
    fields: Vec<(String, Vec<u8>)>,
    attempt: u32,
}

struct RedisSubscription {
    conn: ConnectionManager,
    read: ConnectionManager,
    topic: String,
    group: String,
    consumer: String,
    settings: Settings,
    buffer: VecDeque<Entry>,
    next_reclaim: tokio::time::Instant,
    closed: bool,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// Parses `[[id, [field, value, ...]], ...]` (entries deleted meanwhile have nil fields).
fn parse_entries(v: &Value, attempt: impl Fn(&str) -> u32) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in items(v).unwrap_or_default() {
        let Some([id, fields]) = items(e).and_then(|a| <&[Value; 2]>::try_from(a).ok()) else {
            continue;
        };
        let Some(id) = text(id) else { continue };
        let mut fs = Vec::new();
        let flat: Vec<&Value> = match fields {
            Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
            other => items(other).unwrap_or_default().iter().collect(),
        };
        for pair in flat.chunks(2) {
            if let [k, v] = pair {
                let value = match v {
                    Value::BulkString(b) => b.clone(),
                    other => text(other).unwrap_or_default().into_bytes(),
                };
                fs.push((text(k).unwrap_or_default(), value));
            }
        }
        let attempt = attempt(&id);
        out.push(Entry {
            id,
            fields: fs,
            attempt,
        });
    }
    out
}

/// Makes pending entries claimable after `after`: their idle time is set to
/// `processing_timeout - after` without counting a delivery.
async fn release(
    conn: &ConnectionManager,
    topic: &str,
    group: &str,
    consumer: &str,
    ids: &[String],
    processing_timeout: Duration,
    after: Duration,
) -> Result<(), PubSubError> {
    if ids.is_empty() {
        return Ok(());
    }
    let idle = processing_timeout.saturating_sub(after).as_millis() as u64;
    let mut conn = conn.clone();
    redis::cmd("XCLAIM")
        .arg(topic)
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(ids)
        .arg("IDLE")
        .arg(idle)
        .arg("JUSTID")
        .query_async::<Value>(&mut conn)
        .await
        .map_err(backend)
        .map(drop)
}

impl RedisSubscription {
    async fn reclaim(&mut self) -> Result<(), PubSubError> {
        let min_idle = self.settings.processing_timeout.as_millis() as u64;
        let mut conn = self.conn.clone();
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.topic)
            .arg(&self.group)
            .arg("IDLE")
            .arg(min_idle)
            .arg("-")
            .arg("+")
            .arg(self.settings.queue_depth)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let mut counts = BTreeMap::new();
        for p in items(&pending).unwrap_or_default() {
            if let Some([id, _, _, Value::Int(n)]) =
                items(p).and_then(|a| <&[Value; 4]>::try_from(a).ok())
                && let Some(id) = text(id)
            {
                counts.insert(id, u32::try_from(*n).unwrap_or(u32::MAX));
            }
        }
        if counts.is_empty() {
            return Ok(());
        }
        let ids: Vec<&String> = counts.keys().collect();
        let claimed: Value = redis::cmd("XCLAIM")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(min_idle)
            .arg(ids)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let entries = parse_entries(&claimed, |id| {
            counts.get(id).copied().unwrap_or(0).saturating_add(1)
        });
        // Entries trimmed from the stream meanwhile come back without fields: ack them away.
        let (gone, live): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.fields.is_empty());
        if !gone.is_empty() {
            let ids: Vec<String> = gone.into_iter().map(|e| e.id).collect();
            let _: Result<Value, _> = redis::cmd("XACK")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(ids)
                .query_async(&mut conn)
                .await;
        }
        self.buffer.extend(live);
        Ok(())
    }

    async fn read_new(&mut self, block: Duration) -> Result<(), PubSubError> {
        let res: Result<Value, RedisError> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.settings.queue_depth)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&self.topic)
            .arg(">")
            .query_async(&mut self.read)
            .await;
        let v = match res {
            Ok(v) => v,
            Err(e) => {
                if e.to_string().contains("NOGROUP") {
                    // The server lost the stream (a restart without persistence): the group
                    // starts again from now.
                    create_group(&self.conn, &self.topic, &self.group).await?;
                }
                return Err(backend(e));
            }
        };
        // RESP3: a map {stream: entries}; RESP2: [[stream, entries]].
        let streams: Vec<&Value> = match &v {
            Value::Map(m) => m.iter().map(|(_, e)| e).collect(),
            Value::Nil => Vec::new(),
            other => items(other)
                .unwrap_or_default()
                .iter()
                .filter_map(|s| items(s).and_then(|a| a.get(1)))
                .collect(),
        };
        for entries in streams {
            self.buffer.extend(parse_entries(entries, |_| 1));
        }
        Ok(())
    }

    fn delivery(&self, e: Entry) -> Delivery {
        let mut data = Bytes::new();
        let mut content_type = None;
        let mut metadata = BTreeMap::new();
        for (k, v) in e.fields {
            if k == "data" {
                data = Bytes::from(v);
            } else if k == "contentType" {
                content_type = Some(String::from_utf8_lossy(&v).into_owned());
            } else if let Some(name) = k.strip_prefix(META_PREFIX) {
                metadata.insert(name.to_string(), String::from_utf8_lossy(&v).into_owned());
            }
        }
        let published_at =
            e.id.split('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
                .map_or_else(SystemTime::now, |ms| {
                    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
                });
        Delivery {
            message: Message {
                id: e.id.clone(),
                topic: self.topic.clone(),
                data,
                content_type,
                metadata,
                published_at,
                delivery_attempt: e.attempt.max(1),
            },
            acker: Box::new(RedisAcker {
                conn: self.conn.clone(),
                topic: self.topic.clone(),
                group: self.group.clone(),
                consumer: self.consumer.clone(),
                id: Some(e.id),
                processing_timeout: self.settings.processing_timeout,
            }),
        }
    }

    /// Hands entries read but not returned back to the group at once.
    fn release_buffer(&mut self) {
        let ids: Vec<String> = self.buffer.drain(..).map(|e| e.id).collect();
        if ids.is_empty() {
            return;
        }
        let (conn, topic, group, consumer) = (
            self.conn.clone(),
            self.topic.clone(),
            self.group.clone(),
            self.consumer.clone(),
        );
        let timeout = self.settings.processing_timeout;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = release(
                    &conn,
                    &topic,
                    &group,
                    &consumer,
                    &ids,
                    timeout,
                    Duration::ZERO,
                )
                .await;
            });
        }
    }
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(self.delivery(e)));
            }
            let now = tokio::time::Instant::now();
            if now >= self.next_reclaim {
                self.next_reclaim = now + self.settings.redeliver_interval;
                if let Err(e) = self.reclaim().await {
                    return Some(Err(e));
                }
                continue;
            }
            let block = (self.next_reclaim - now).min(Duration::from_secs(1));
            if let Err(e) = self.read_new(block).await {
                // Do not spin while the server is away.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(Err(e));
            }
        }
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        self.closed = true;
        self.release_buffer();
        Ok(())
    }
}

impl Drop for RedisSubscription {
    fn drop(&mut self) {
        self.release_buffer();
    }
}

struct RedisAcker {
    conn: ConnectionManager,
    topic: String,
    group: String,
    consumer: String,
    id: Option<String>,
    processing_timeout: Duration,
}

#[async_trait]
impl Acker for RedisAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        retry_refused(|| {
            let mut conn = self.conn.clone();
            let (topic, group, id) = (&self.topic, &self.group, &id);
            async move {
                redis::cmd("XACK")
                    .arg(topic)
                    .arg(group)
                    .arg(id)
                    .query_async::<Value>(&mut conn)
                    .await
            }
        })
        .await
        .map(drop)
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        release(
            &self.conn,
            &self.topic,
            &self.group,
            &self.consumer,
            &[id],
            self.processing_timeout,
            redeliver_after,
        )
        .await
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        // Dropped unsettled: claimable again at once.
        let Some(id) = self.id.take() else { return };
        let (conn, topic, group, consumer) = (
            self.conn.clone(),
            self.topic.clone(),
            self.group.clone(),
            self.consumer.clone(),
        );
        let timeout = self.processing_timeout;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = release(
                    &conn,
                    &topic,
                    &group,
                    &consumer,
                    &[id],
                    timeout,
                    Duration::ZERO,
                )
                .await;
            });
        }
    }
}

/// A random number for consumer names, without a dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}
