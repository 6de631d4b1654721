//! MQTT 3.1.1 (`pubsub.mqtt3`), with the `rumqttc` client. Plain TCP only (`tcp://` or
//! `mqtt://` URLs); QoS 1 only.
//!
//! MQTT's guarantees are weaker than a log broker's, and this backend is honest about it:
//!
//! - **Publish** waits for the broker's PUBACK (QoS 1), so `Ok` means the broker took the
//!   message. Whether it survives a broker crash depends on the broker's persistence
//!   (Mosquitto writes its store on shutdown and every `autosave_interval`, not per
//!   message). A publish that timed out may still have been delivered (at least once).
//! - **Consumer groups** are shared subscriptions, `$share/<group>/<topic>` (MQTT 5, also
//!   offered by Mosquitto ≥ 1.6 and EMQX on MQTT 3.1.1): each message goes to one client of
//!   the group.
//! - **While down**: each subscriber is a client with a persistent session
//!   (`cleanSession` false, the default) and a stable client id
//!   `<consumerID>-<hash of group and topic>-<n>` (n: the lowest number not in use by this
//!   process), so the broker queues what the group missed. Two processes of one app must
//!   have distinct `consumerID`s. A persistent session of an instance that never comes
//!   back keeps the share of messages the broker routed to it while it was away, until
//!   something with its client id reconnects — MQTT 3 has no session expiry.
//! - **Ack** is the PUBACK for the delivery (manual acks), sent once the app answered.
//! - **Nack** does not exist in MQTT 3. It is emulated: after the nack's delay the message
//!   is re-published (QoS 1, with its id, metadata and delivery count + 1) to the group's
//!   retry topic `trellis-retry/<group>/<topic>`, which the group's clients also subscribe
//!   to, and only then is the original acknowledged. Only this group sees the retry. If the
//!   process dies before that, the broker redelivers the original when the session
//!   reconnects (delivery count from the DUP flag). A delivery dropped unsettled is nacked.
//! - **Envelope**: MQTT 3 has no headers, so messages carry a small envelope (a
//!   `TRELLIS1` line, a JSON line with id, topic, content type, metadata, publish time,
//!   delivery count, then the data). Messages without it (from plain MQTT publishers) are
//!   delivered as they are, with a random id.
//! - No ordering guarantee (shared subscriptions and retries), no TTL, no native bulk.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Acker, Capabilities, Delivery, Message, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};

const MAGIC: &[u8] = b"TRELLIS1\n";
const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_PREFIX: &str = "trellis-retry";

fn be(e: impl std::fmt::Display) -> PubSubError {
    PubSubError::backend(e)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A short stable hash (FNV-1a) for client ids.
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

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// Group names go into topic filters: no `/`, `+`, `#`.
fn sanitize_group(g: &str) -> String {
    g.chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect()
}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct PubState {
    /// Publishes handed to the event loop, not yet sent, in order.
    queue: VecDeque<Option<Waiter>>,
    /// Sent publishes by packet id, waiting for their PUBACK.
    inflight: HashMap<u16, Option<Waiter>>,
}

struct Publisher {
    client: AsyncClient,
    state: Arc<Mutex<PubState>>,
    connected: Arc<AtomicBool>,
    last_error: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    fn start(opts: MqttOptions) -> Self {
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let state = Arc::new(Mutex::new(PubState::default()));
        let connected = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(Mutex::new("not connected yet".to_string()));
        let task = tokio::spawn({
            let (state, connected, last_error) =
                (state.clone(), connected.clone(), last_error.clone());
            async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            connected.store(true, Ordering::SeqCst);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            let mut st = lock(&state);
                            // A retransmission after a reconnect is already in flight.
                            if !st.inflight.contains_key(&pkid)
                                && let Some(w) = st.queue.pop_front()
                            {
                                st.inflight.insert(pkid, w);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(Some(w)) = lock(&state).inflight.remove(&ack.pkid) {
                                let _ = w.send(Ok(()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            connected.store(false, Ordering::SeqCst);
                            let msg = e.to_string();
                            tracing::debug!("mqtt publisher connection: {msg}");
                            {
                                let mut st = lock(&state);
                                // The entries stay, so later events still line up.
                                let st = &mut *st;
                                for w in st.queue.iter_mut().chain(st.inflight.values_mut()) {
                                    if let Some(w) = w.take() {
                                        let _ = w.send(Err(msg.clone()));
                                    }
                                }
                            }
                            *lock(&last_error) = msg;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }
        });
        Self {
            client,
            state,
            connected,
            last_error,
            task,
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish(
        &self,
        topic: &str,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), PubSubError> {
        if !self.connected.load(Ordering::SeqCst) {
            return Err(PubSubError::Backend(format!(
                "not connected to the MQTT broker: {}",
                lock(&self.last_error)
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            // The waiter is queued before the request, under the lock, so the event loop's
            // `Outgoing::Publish` events pair with waiters in order.
            let mut st = lock(&self.state);
            st.queue.push_back(Some(tx));
            if let Err(e) = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            {
                st.queue.pop_back();
                return Err(be(e));
            }
        }
        match tokio::time::timeout(PUBACK_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(PubSubError::Backend(e)),
            Ok(Err(_)) => Err(PubSubError::Backend(
                "the MQTT publish was abandoned".into(),
            )),
            Err(_) => Err(PubSubError::Backend(format!(
                "no PUBACK from the MQTT broker within {PUBACK_TIMEOUT:?}"
            ))),
        }
    }
}

/// The instance numbers in use for one (group, topic), each with its subscription's
/// `closed` flag.
type Slots = BTreeMap<usize, Arc<AtomicBool>>;

/// An MQTT 3.1.1 broker connection.
pub struct MqttBroker {
    host: String,
    port: u16,
    consumer_id: String,
    retain: bool,
    clean_session: bool,
    keep_alive: Duration,
    publisher: Arc<Publisher>,
    /// Instance numbers in use per (group, topic), for stable client ids.
    slots: Arc<Mutex<HashMap<String, Slots>>>,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBroker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("consumer_id", &self.consumer_id)
            .finish_non_exhaustive()
    }
}

fn parse_url(url: &str) -> Result<(String, u16), PubSubError> {
    let bad = |why: &str| PubSubError::InvalidRequest(format!("metadata url: {url:?} {why}"));
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .ok_or_else(|| bad("must start with tcp:// or mqtt:// (TLS is not supported)"))?;
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.trim_matches(['[', ']']).to_string(),
            p.parse().map_err(|_| bad("has an invalid port"))?,
        )),
        None if !rest.is_empty() => Ok((rest.to_string(), 1883)),
        None => Err(bad("has no host")),
    }
}

impl MqttBroker {
    /// Connects the publishing client to `url` (default `tcp://127.0.0.1:1883`).
    pub async fn open(md: &Metadata) -> Result<Self, PubSubError> {
        let (host, port) = parse_url(md.get("url").unwrap_or("tcp://127.0.0.1:1883"))?;
        if md.usize("qos", 1, 0..=2)? != 1 {
            return Err(PubSubError::InvalidRequest(
                "metadata qos: only 1 (at least once) is supported".into(),
            ));
        }
        let consumer_id = md.get("consumerID").unwrap_or("trellis").to_string();
        let keep_alive = md.positive_duration("keepAlive", Duration::from_secs(10))?;
        let mut opts = MqttOptions::new(format!("{consumer_id}-pub-{}", random_id()), &host, port);
        opts.set_clean_session(true)
            .set_keep_alive(keep_alive.max(Duration::from_secs(5)))
            .set_inflight(1000);
        let publisher = Arc::new(Publisher::start(opts));
        // Wait for the first connection, so `open` reports an unreachable broker.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !publisher.connected.load(Ordering::SeqCst) {
            if tokio::time::Instant::now() > deadline {
                return Err(PubSubError::Backend(format!(
                    "cannot connect to the MQTT broker at {host}:{port}: {}",
                    lock(&publisher.last_error)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            host,
            port,
            consumer_id,
            retain: md.bool("retain", false)?,
            clean_session: md.bool("cleanSession", false)?,
            keep_alive,
            publisher,
            slots: Arc::default(),
        })
    }
}

/// What the envelope carries besides the data.
#[derive(Debug, Clone)]
struct Envelope {
    id: String,
    topic: String,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    published_ms: u64,
    attempt: u32,
}

impl Envelope {
    fn encode(&self, data: &[u8]) -> Result<Vec<u8>, PubSubError> {
        let header = serde_json::json!({
            "id": self.id,
            "topic": self.topic,
            "ct": self.content_type,
            "md": self.metadata,
            "ts": self.published_ms,
            "n": self.attempt,
        });
        let mut out = MAGIC.to_vec();
        serde_json::to_writer(&mut out, &header).map_err(be)?;
        out.push(b'\n');
        out.extend_from_slice(data);
        Ok(out)
    }

    /// The envelope and data of a received payload, `None` for one without envelope.
    fn decode(payload: &Bytes) -> Option<(Envelope, Bytes)> {
        let rest = payload.strip_prefix(MAGIC)?;
        let nl = rest.iter().position(|b| *b == b'\n')?;
        let v: serde_json::Value = serde_json::from_slice(&rest[..nl]).ok()?;
        let env = Envelope {
            id: v.get("id")?.as_str()?.to_string(),
            topic: v.get("topic")?.as_str()?.to_string(),
            content_type: v.get("ct").and_then(|c| c.as_str()).map(str::to_string),
            metadata: serde_json::from_value(v.get("md")?.clone()).ok()?,
            published_ms: v.get("ts")?.as_u64()?,
            attempt: u32::try_from(v.get("n")?.as_u64()?).ok()?,
        };
        let start = MAGIC.len() + nl + 1;
        Some((env, payload.slice(start..)))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[async_trait]
impl PubSub for MqttBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bulk_publish: false,
            // MQTT 3.1.1 has no message expiry (that is MQTT 5).
            ttl: false,
            // One client's QoS 1 messages on one topic reach a subscriber in the order
            // published (MQTT 3.1.1, 4.6 "ordered topic"), shared subscriptions included:
            // the conformance case checks it over 1,000 messages.
            ordered: true,
            // The broker keeps nothing for a subscription that does not exist yet.
            replay: false,
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        req.validate()?;
        if req.topic.contains(['+', '#']) {
            return Err(PubSubError::InvalidRequest(
                "an MQTT topic to publish to must not contain + or #".into(),
            ));
        }
        let env = Envelope {
            id: random_id(),
            topic: req.topic.clone(),
            content_type: req.content_type,
            metadata: req.metadata,
            published_ms: now_ms(),
            attempt: 1,
        };
        let payload = env.encode(&req.data)?;
        self.publisher
            .publish(&req.topic, self.retain, payload)
            .await
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        req.validate()?;
        let group = sanitize_group(&req.consumer_group);
        let key = format!("{group}\0{}", req.topic);
        let closed = Arc::new(AtomicBool::new(false));
        // An instance of the group that is closing still holds its client id; wait (a
        // little) until it has left, so this one resumes its session and gets what the
        // broker queued there, rather than starting a new one beside it.
        let wait_until = tokio::time::Instant::now() + Duration::from_secs(5);
        let slot = loop {
            {
                let mut slots = lock(&self.slots);
                let used = slots.entry(key.clone()).or_default();
                let closing = used.values().any(|c| c.load(Ordering::SeqCst));
                if !closing || tokio::time::Instant::now() > wait_until {
                    let slot = (0..).find(|n| !used.contains_key(n)).unwrap_or_default();
                    used.insert(slot, closed.clone());
                    break slot;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client_id = format!(
            "{}-{}-{slot}",
            self.consumer_id,
            &hash(&[&group, &req.topic])[..12]
        );
        let mut opts = MqttOptions::new(client_id, &self.host, self.port);
        opts.set_clean_session(self.clean_session)
            .set_manual_acks(true)
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(5)));
        let (client, el) = AsyncClient::new(opts, 1000);
        let retry_topic = format!("{RETRY_PREFIX}/{group}/{}", req.topic);
        let filters = vec![
            format!("$share/{group}/{}", req.topic),
            format!("$share/{group}/{retry_topic}"),
        ];
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let shared = Arc::new(SubShared {
            client: client.clone(),
            publisher: self.publisher.clone(),
            retry_topic,
            closed,
            outstanding: AtomicUsize::new(0),
        });
        let slot = SlotGuard {
            slots: self.slots.clone(),
            key,
            slot,
        };
        let task = tokio::spawn(run_subscriber(
            el,
            shared.clone(),
            filters,
            tx,
            ready_tx,
            slot,
            done_tx,
        ));
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Box::new(MqttSubscription {
                rx,
                shared,
                done: Some(done_rx),
                ended: false,
            })),
            failed => {
                shared.closed.store(true, Ordering::SeqCst);
                task.abort();
                Err(match failed {
                    Ok(Ok(Err(e))) => e,
                    _ => PubSubError::Backend("MQTT subscribe timed out".into()),
                })
            }
        }
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        if self.publisher.connected.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(PubSubError::Backend(format!(
                "not connected to the MQTT broker: {}",
                lock(&self.publisher.last_error)
            )))
        }
    }
}

struct SubShared {
    client: AsyncClient,
    publisher: Arc<Publisher>,
    retry_topic: String,
    closed: Arc<AtomicBool>,
    /// Deliveries handed out and not yet settled.
    outstanding: AtomicUsize,
}

type Item = Result<Delivery, PubSubError>;

/// This subscriber's instance number for its (group, topic), released when dropped.
struct SlotGuard {
    slots: Arc<Mutex<HashMap<String, Slots>>>,
    key: String,
    slot: usize,
}

impl SlotGuard {
    /// Whether another instance of the group is subscribed in this process.
    fn others(&self) -> bool {
        lock(&self.slots)
            .get(&self.key)
            .is_some_and(|used| used.keys().any(|s| *s != self.slot))
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = lock(&self.slots);
        if let Some(used) = slots.get_mut(&self.key) {
            used.remove(&self.slot);
            if used.is_empty() {
                slots.remove(&self.key);
            }
        }
    }
}

async fn run_subscriber(
    mut el: EventLoop,
    shared: Arc<SubShared>,
    filters: Vec<String>,
    tx: mpsc::UnboundedSender<Item>,
    ready: oneshot::Sender<Result<(), PubSubError>>,
    slot: SlotGuard,
    done: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut failures = 0u32;
    // Once closed and settled: `Some(n)` while n UNSUBACKs are awaited.
    let mut leaving: Option<usize> = None;
    loop {
        let settled =
            shared.closed.load(Ordering::SeqCst) && shared.outstanding.load(Ordering::SeqCst) == 0;
        if settled {
            match leaving {
                // Another instance of the group is subscribed here: unsubscribe first, so
                // the broker stops routing to this session, and keep handling what is
                // already on its way (re-published for the group).
                None if slot.others() => {
                    let n = filters
                        .iter()
                        .filter(|f| shared.client.try_unsubscribe((*f).clone()).is_ok())
                        .count();
                    leaving = Some(n);
                }
                // The last instance keeps its session: the group's messages wait in it.
                None => break,
                Some(0) => break,
                Some(_) => {}
            }
        }
        let Ok(ev) = tokio::time::timeout(Duration::from_millis(100), el.poll()).await else {
            continue;
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if leaving.is_some() {
                    // Reconnected while leaving: the session may be new; just go.
                    break;
                }
                // Also after a reconnect: the session may be new.
                let subs = filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                if let Err(e) = shared.client.try_subscribe_many(subs) {
                    tracing::warn!("mqtt subscribe: {e}");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(r) = ready.take() {
                    let failed = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                    let _ = r.send(if failed {
                        Err(PubSubError::Backend(
                            "the MQTT broker refused the (shared) subscription".into(),
                        ))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => {
                if let Some(n) = &mut leaving {
                    *n = n.saturating_sub(1);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let delivery = to_delivery(p, &shared);
                if shared.closed.load(Ordering::SeqCst) {
                    // Dropped: goes back to the group (nacked).
                    drop(delivery);
                } else {
                    let _ = tx.send(Ok(delivery));
                }
            }
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if ready.is_some() && failures >= 3 {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(be(&e)));
                    }
                    return;
                }
                if failures == 1 && !shared.closed.load(Ordering::SeqCst) {
                    let _ = tx.send(Err(be(&e)));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let _ = shared.client.try_disconnect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, el.poll()).await {
        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
            break;
        }
    }
    // Only now may another subscriber take this client id.
    drop(slot);
    let _ = done.send(());
}

fn to_delivery(p: rumqttc::Publish, shared: &Arc<SubShared>) -> Delivery {
    let dup = u32::from(p.dup);
    let (env, data) = match Envelope::decode(&p.payload) {
        Some((mut env, data)) => {
            env.attempt = env.attempt.saturating_add(dup);
            (env, data)
        }
        None => (
            Envelope {
                id: random_id(),
                topic: p.topic.clone(),
                content_type: None,
                metadata: BTreeMap::new(),
                published_ms: now_ms(),
                attempt: 1 + dup,
            },
            p.payload.clone(),
        ),
    };
    shared.outstanding.fetch_add(1, Ordering::SeqCst);
    let message = Message {
        id: env.id.clone(),
        topic: env.topic.clone(),
        data: data.clone(),
        content_type: env.content_type.clone(),
        metadata: env.metadata.clone(),
        published_at: UNIX_EPOCH + Duration::from_millis(env.published_ms),
        delivery_attempt: env.attempt,
    };
    Delivery {
        message,
        acker: Box::new(MqttAcker {
            inner: Some(AckInner {
                publish: p,
                shared: shared.clone(),
                env,
                data,
            }),
        }),
    }
}

struct AckInner {
    publish: rumqttc::Publish,
    shared: Arc<SubShared>,
    env: Envelope,
    data: Bytes,
}

impl AckInner {
    async fn ack(self) -> Result<(), PubSubError> {
        let res = self.shared.client.ack(&self.publish).await.map_err(be);
        self.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
        res
    }

    /// Re-publishes to the group's retry topic after `delay`, then acks the original.
    async fn requeue(self, delay: Duration) {
        tokio::time::sleep(delay).await;
        let mut env = self.env.clone();
        env.attempt = env.attempt.saturating_add(1);
        let republished = match env.encode(&self.data) {
            Ok(payload) => {
                self.shared
                    .publisher
                    .publish(&self.shared.retry_topic, false, payload)
                    .await
            }
            Err(e) => Err(e),
        };
        match republished {
            Ok(()) => {
                let _ = self.ack().await;
            }
            Err(e) => {
                // Left unacknowledged: the broker redelivers it when the session reconnects.
                tracing::warn!("mqtt nack: re-publishing {} failed: {e}", env.id);
                self.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

struct MqttAcker {
    inner: Option<AckInner>,
}

#[async_trait]
impl Acker for MqttAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        self.inner.take().ok_or(PubSubError::Closed)?.ack().await
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        let inner = self.inner.take().ok_or(PubSubError::Closed)?;
        tokio::spawn(inner.requeue(redeliver_after));
        Ok(())
    }
}

impl Drop for MqttAcker {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(inner.requeue(Duration::ZERO));
            } else {
                inner.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

struct MqttSubscription {
    rx: mpsc::UnboundedReceiver<Item>,
    shared: Arc<SubShared>,
    done: Option<oneshot::Receiver<()>>,
    ended: bool,
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        if self.ended {
            return None;
        }
        self.rx.recv().await
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        self.ended = true;
        self.shared.closed.store(true, Ordering::SeqCst);
        // Received but not handed out: back to the group.
        while let Ok(item) = self.rx.try_recv() {
            drop(item);
        }
        // Wait (a little) until those are re-published and the client has left, so the
        // next subscriber of the group gets this session back.
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), done).await;
        }
        Ok(())
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}
