//! The delivery loop, written once above the `PubSub` trait for every broker.
//!
//! Once the app is ready, the sidecar reads its programmatic subscriptions
//! (`GET /dapr/subscribe`), adds the declarative ones, and runs one loop per subscription:
//! subscribe with the app id as consumer group, route each message (routing rules over the
//! CloudEvent), `POST` it to the app, and settle it by the app's answer as Dapr does:
//! success acks; RETRY, errors and non-2xx statuses nack with exponential backoff; DROP and
//! 404 ack with a warning and a count. After [`DeliveryPolicy::max_attempts`] a message
//! goes to the subscription's dead-letter topic (same pub/sub) when it has one.
//!
//! A `components.<pubsub>.inbound` resiliency policy takes over: its timeout and circuit
//! breaker guard each request to the app (an open breaker nacks without calling it), and
//! its retry policy replaces the backoff and the attempt count before dead-lettering. The
//! broker keeps the message between attempts either way, so a retry survives a restart.
//!
//! A bulk subscription (`bulkSubscribe.enabled`) receives batches: what the broker hands
//! over until `maxMessagesCount` or `maxAwaitDurationMs`, one request per route, and each
//! entry is settled by its own status in the app's answer.
//!
//! How many requests of one subscription the app handles at once is the component's
//! `concurrencyMode` (see [`crate::pubsub::delivery_concurrency`]): one at a time keeps the
//! broker's per-topic order up to the app (until a message is retried).
//!
//! The app is reached through an [`AppChannel`]: its HTTP or gRPC port for the
//! subscriptions above, or the stream of a streaming subscription
//! (`api::grpc::subscribe`), which joins its group itself and hands the subscription to
//! [`deliver`]. Every target is settled by the same rules.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use trellis_pubsub::{Acker, Delivery, Message, PublishRequest, SubscribeRequest, Subscription};

use crate::Body;
use crate::api::callbacks::{self, AppVerdict, BulkEntry};
use crate::cloudevent::{self, CLOUDEVENT_CONTENT_TYPE};
use crate::invoke::{AppCall, AppChannel};
use crate::pubsub::PubSubComponent;
use crate::resiliency::{Block, Direction, Failure, Policy, Retry, Verdict};
use crate::runtime::Runtime;
use crate::subscriptions::{self, ActiveSubscription};

/// Largest app answer read to find its status; a bigger one is not a status answer.
const MAX_ANSWER: usize = 64 * 1024;

/// What a bulk answer may add per entry on top of [`MAX_ANSWER`] (its id and status).
const MAX_ANSWER_PER_ENTRY: usize = 1024;

/// Deliveries of one subscription that may be settling with the broker beyond those at
/// the app: settling is a broker round trip the next delivery need not wait for.
const MAX_SETTLING: usize = 64;

/// Attempts at `GET /dapr/subscribe` before going without programmatic subscriptions.
const SUBSCRIBE_TRIES: u32 = 3;

/// Retry pace for a broker that fails to subscribe or receive.
const BROKER_RETRY: Duration = Duration::from_secs(1);

/// Everything one subscription loop needs.
struct Loop {
    rt: Arc<Runtime>,
    channel: Arc<dyn AppChannel>,
    sub: ActiveSubscription,
    component: Arc<PubSubComponent>,
    /// The inbound policy's timeout and breaker, around each request to the app.
    guard: Policy,
    /// The inbound policy's retries, replacing [`crate::DeliveryPolicy`]'s.
    retry: Option<Retry>,
    /// The subscription's delivery series, by how a message was settled.
    ingress: Option<crate::metrics::Ingress>,
}

impl Loop {
    fn new(
        rt: Arc<Runtime>,
        channel: Arc<dyn AppChannel>,
        sub: ActiveSubscription,
        component: Arc<PubSubComponent>,
    ) -> Self {
        let policy = rt
            .resiliency
            .component(&sub.spec.pubsub, Block::Pubsub, Direction::Inbound)
            .unwrap_or_default();
        // Retries are the broker's redeliveries here, never a second request in a row.
        let retry = policy.retry.clone();
        let guard = Policy {
            retry: None,
            ..policy
        };
        let ingress = rt.metrics.ingress(&sub.spec.pubsub, &sub.spec.topic);
        Self {
            rt,
            channel,
            sub,
            component,
            guard,
            retry,
            ingress,
        }
    }

    /// Sends `req` to the app under the inbound policy and reads the app's answer (up to
    /// `limit` bytes) with `verdict`.
    async fn call_app<V>(
        &self,
        path: &str,
        req: Request<Body>,
        limit: usize,
        verdict: impl FnOnce(StatusCode, &[u8]) -> V,
        failed: impl Fn(String) -> V,
        judge: impl Fn(&V) -> Verdict,
    ) -> V {
        let mut once = Some((req, verdict));
        let attempt = |_| {
            let taken = once.take();
            async move {
                let Some((req, verdict)) = taken else {
                    return Err("the request cannot be sent again".to_string());
                };
                let resp = self
                    .channel
                    .call(path, req)
                    .await
                    .map_err(|e| format!("cannot reach the app: {e}"))?;
                let status = resp.status();
                let body = read_limited(resp.into_body(), limit)
                    .await
                    .unwrap_or_default();
                Ok(verdict(status, &body))
            }
        };
        let outcome = self
            .guard
            .run(false, attempt, |r: &Result<V, String>| match r {
                Ok(v) => judge(v),
                Err(_) => Verdict::Failure(Failure::Error),
            })
            .await;
        match outcome.result {
            Ok(Ok(v)) => v,
            Ok(Err(why)) => failed(why),
            Err(stopped) => failed(format!("not delivered: {stopped}")),
        }
    }
}

/// Runs every subscription of the app until `stop` turns true. `declarative` are the
/// already validated declarative subscriptions.
pub async fn run(
    rt: Arc<Runtime>,
    channel: Arc<dyn AppChannel>,
    declarative: Vec<ActiveSubscription>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        () = rt.health.wait_ready() => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let programmatic = tokio::select! {
        subs = programmatic(&rt, channel.as_ref()) => subs,
        _ = stop.wait_for(|s| *s) => return,
    };
    let mut subs: Vec<ActiveSubscription> = Vec::new();
    for sub in declarative.into_iter().chain(programmatic) {
        // One consumer group per topic and app: a second subscription would split the
        // messages with the first instead of getting them too.
        if subs
            .iter()
            .any(|s| s.spec.pubsub == sub.spec.pubsub && s.spec.topic == sub.spec.topic)
        {
            tracing::warn!(
                pubsub = sub.spec.pubsub,
                topic = sub.spec.topic,
                "ignoring a second subscription to the same topic"
            );
            continue;
        }
        subs.push(sub);
    }
    rt.set_subscriptions(subs.iter().map(|s| s.spec.clone()).collect());
    let mut loops = JoinSet::new();
    for sub in subs {
        let Some(component) = rt.pubsub.get(&sub.spec.pubsub).cloned() else {
            continue;
        };
        let l = Loop::new(rt.clone(), channel.clone(), sub, component);
        loops.spawn(l.run(stop.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// How `sub` joins its consumer group: the app id is the group, as for every subscription.
pub fn subscribe_request(rt: &Runtime, sub: &ActiveSubscription) -> SubscribeRequest {
    let mut req = SubscribeRequest::new(sub.spec.topic.clone(), rt.app.app_id.clone());
    req.metadata = sub.spec.metadata.clone();
    req
}

/// Delivers `subscription`, already joined (see [`subscribe_request`]), to `channel` by
/// the rules of `sub` until `stop` turns true or the broker closes it. Then it closes the
/// subscription and gives deliveries in progress the graceful-shutdown time to settle;
/// what is still unsettled goes back to the group.
pub async fn deliver(
    rt: Arc<Runtime>,
    channel: Arc<dyn AppChannel>,
    sub: ActiveSubscription,
    component: Arc<PubSubComponent>,
    subscription: Box<dyn Subscription>,
    stop: watch::Receiver<bool>,
) {
    let l = Loop::new(rt, channel, sub, component);
    Arc::new(l).consume(subscription, stop).await;
}

/// The app's `GET /dapr/subscribe`, compiled; problems are logged, never fatal (the app
/// keeps its other subscriptions and its invocations).
async fn programmatic(rt: &Runtime, channel: &dyn AppChannel) -> Vec<ActiveSubscription> {
    // The app just answered its readiness check, but a connection can still fail once;
    // a few tries keep one hiccup from costing the app all its subscriptions.
    let mut tries = 0;
    let resp = loop {
        tries += 1;
        let mut req = Request::get("/dapr/subscribe")
            .body(Body::empty())
            .unwrap_or_default();
        req.extensions_mut().insert(AppCall::ListSubscriptions);
        match channel.call("/dapr/subscribe", req).await {
            Ok(resp) => break resp,
            Err(e) if tries >= SUBSCRIBE_TRIES => {
                tracing::warn!(error = %e, "cannot read the app's subscriptions (GET /dapr/subscribe)");
                return Vec::new();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if !resp.status().is_success() {
        if resp.status() != StatusCode::NOT_FOUND {
            tracing::warn!(status = %resp.status(), "GET /dapr/subscribe failed; no programmatic subscriptions");
        }
        return Vec::new();
    }
    let body = match read_limited(resp.into_body(), MAX_ANSWER).await {
        Some(b) => b,
        None => {
            tracing::warn!("GET /dapr/subscribe: unreadable answer");
            return Vec::new();
        }
    };
    let specs = match callbacks::parse_subscriptions(&body) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return Vec::new();
        }
    };
    specs
        .into_iter()
        .filter_map(|spec| {
            if let Err(why) = subscriptions::admit(&spec, &rt.app.app_id, &rt.pubsub) {
                tracing::warn!("{why}");
                return None;
            }
            ActiveSubscription::compile(spec)
                .map_err(|e| tracing::error!("rejecting a subscription from /dapr/subscribe: {e}"))
                .ok()
        })
        .collect()
}

/// Both permits a delivery needs, the overall one first; `None` once closed.
async fn acquire_both(
    tasks: &Arc<Semaphore>,
    at_app: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
    let task = tasks.clone().acquire_owned().await.ok()?;
    let app = at_app.clone().acquire_owned().await.ok()?;
    Some((task, app))
}

async fn read_limited(body: Body, limit: usize) -> Option<bytes::Bytes> {
    http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// What one receive from the broker gave.
enum Received {
    /// One delivery, or up to a bulk batch of them, in broker order.
    Batch(Vec<Delivery>),
    Failed(trellis_pubsub::PubSubError),
    Closed,
}

impl Loop {
    /// Joins the group, retrying while the broker fails, then delivers.
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let (pubsub, topic) = (&this.sub.spec.pubsub, &this.sub.spec.topic);
        let req = subscribe_request(&this.rt, &this.sub);
        let subscription = loop {
            tokio::select! {
                r = this.component.broker.subscribe(req.clone()) => match r {
                    Ok(s) => break s,
                    Err(e) => tracing::warn!(pubsub, topic, error = %e, "cannot subscribe; retrying"),
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(BROKER_RETRY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        this.consume(subscription, stop).await;
    }

    async fn consume(
        self: Arc<Self>,
        mut subscription: Box<dyn Subscription>,
        mut stop: watch::Receiver<bool>,
    ) {
        let this = self;
        let (pubsub, topic) = (&this.sub.spec.pubsub, &this.sub.spec.topic);
        this.rt
            .delivery_stats
            .subscribed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            pubsub,
            topic,
            bulk = this.sub.spec.bulk_subscribe.is_some(),
            "subscribed"
        );
        // `at_app` bounds the requests the app is handling at once. With one permit (an
        // ordered subscription) the next event leaves only after the app answered the one
        // before, so the app sees the topic in broker order. Settling with the broker comes
        // after the permit is given back: it need not hold up the next delivery, and it is
        // bounded separately by `tasks`.
        let concurrency = this
            .component
            .delivery_concurrency
            .unwrap_or(this.rt.delivery.max_in_flight)
            .max(1);
        let at_app = Arc::new(Semaphore::new(concurrency));
        let tasks = Arc::new(Semaphore::new(concurrency + MAX_SETTLING));
        let mut in_flight = JoinSet::new();
        loop {
            while in_flight.try_join_next().is_some() {}
            let permits = tokio::select! {
                p = acquire_both(&tasks, &at_app) => match p {
                    Some(p) => p,
                    None => break,
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let received = tokio::select! {
                r = this.receive(&mut *subscription) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match received {
                Received::Closed => break,
                Received::Batch(batch) => {
                    let this = this.clone();
                    in_flight.spawn(async move {
                        let (task, at_app) = permits;
                        this.deliver(batch, at_app).await;
                        drop(task);
                    });
                }
                Received::Failed(e) => {
                    tracing::warn!(pubsub, topic, error = %e, "receiving failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(BROKER_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
            }
        }
        if let Err(e) = subscription.close().await {
            tracing::debug!(pubsub, topic, error = %e, "closing the subscription");
        }
        // Let deliveries in progress finish; what is still unsettled after that goes back
        // to the group (dropped unsettled = redelivered).
        let drain = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(this.rt.graceful_shutdown, drain)
            .await
            .is_err()
        {
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
        }
    }

    /// The next delivery, or for a bulk subscription a batch: what arrives until the
    /// batch is full or `maxAwaitDuration` has passed since its first event.
    async fn receive(&self, subscription: &mut dyn Subscription) -> Received {
        let first = match subscription.next().await {
            None => return Received::Closed,
            Some(Err(e)) => return Received::Failed(e),
            Some(Ok(d)) => d,
        };
        let Some(bulk) = self.sub.spec.bulk_subscribe else {
            return Received::Batch(vec![first]);
        };
        let deadline = tokio::time::Instant::now() + bulk.max_await;
        let mut batch = vec![first];
        while batch.len() < bulk.max_messages {
            match tokio::time::timeout_at(deadline, subscription.next()).await {
                Ok(Some(Ok(d))) => batch.push(d),
                Ok(Some(Err(e))) => {
                    // The batch so far still goes out; the broker is retried on the next
                    // receive.
                    tracing::debug!(error = %e, "receiving failed while filling a bulk batch");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        Received::Batch(batch)
    }

    /// Hands `batch` to the app (one request, or bulk requests per route), gives back the
    /// app permit once it answered, then settles every delivery by its verdict.
    async fn deliver(&self, batch: Vec<Delivery>, at_app: OwnedSemaphorePermit) {
        // Only the messages cross the awaits below: an acker is `Send` but not `Sync`.
        let (messages, ackers): (Vec<Message>, Vec<Box<dyn Acker>>) =
            batch.into_iter().map(|d| (d.message, d.acker)).unzip();
        let started = std::time::Instant::now();
        let verdicts = if self.sub.spec.bulk_subscribe.is_some() {
            self.post_bulk(&messages).await
        } else {
            let mut verdicts = Vec::with_capacity(messages.len());
            for msg in &messages {
                verdicts.push(self.post_one(msg).await);
            }
            verdicts
        };
        drop(at_app);
        // The app's processing time, for each message of the batch.
        let elapsed = started.elapsed();
        // Settled together, so a broker that batches its writes (the embedded one) commits
        // a bulk batch's acks at once.
        join_all(messages.into_iter().zip(ackers).zip(verdicts).map(
            |((message, acker), verdict)| {
                self.settle(Delivery { message, acker }, verdict, elapsed)
            },
        ))
        .await;
    }

    /// Routes one message and delivers it.
    async fn post_one(&self, msg: &Message) -> AppVerdict {
        let (event, glance) = self.look_at(msg);
        match self.sub.route(event.as_ref()) {
            None => AppVerdict::Drop("no route matches the event".into()),
            Some(path) => self.post(path, msg, &glance).await,
        }
    }

    /// What routing and delivery need of `msg`: the parsed event only when a rule looks
    /// inside it, and always whether it is a CloudEvent and its traceparent.
    fn look_at(&self, msg: &Message) -> (Option<serde_json::Value>, cloudevent::Glance) {
        if !self.sub.routes_by_content() {
            return (None, cloudevent::glance(&msg.data));
        }
        let event = cloudevent::parse(&msg.data);
        let glance = cloudevent::Glance {
            is_cloudevent: event.is_some(),
            traceparent: event
                .as_ref()
                .and_then(|ev| ev.get("traceparent"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
        };
        (event, glance)
    }

    /// Routes every message of a bulk batch and `POST`s one bulk envelope per route, in
    /// the order the routes first occur. Returns a verdict per message, in batch order.
    async fn post_bulk(&self, batch: &[Message]) -> Vec<AppVerdict> {
        let spec = &self.sub.spec;
        let looks: Vec<_> = batch.iter().map(|m| self.look_at(m)).collect();
        let mut verdicts: Vec<Option<AppVerdict>> = vec![None; batch.len()];
        let mut routes: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, (event, _)) in looks.iter().enumerate() {
            match self.sub.route(event.as_ref()) {
                None => verdicts[i] = Some(AppVerdict::Drop("no route matches the event".into())),
                Some(path) => match routes.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, members)) => members.push(i),
                    None => routes.push((path, vec![i])),
                },
            }
        }
        for (path, members) in routes {
            let entries: Vec<BulkEntry<'_>> = members
                .iter()
                .map(|&i| {
                    let msg = &batch[i];
                    BulkEntry {
                        entry_id: &msg.id,
                        data: &msg.data,
                        is_cloudevent: looks[i].1.is_cloudevent,
                        content_type: msg.content_type.as_deref(),
                        metadata: &msg.metadata,
                    }
                })
                .collect();
            let ids: Vec<&str> = entries.iter().map(|e| e.entry_id).collect();
            let id = uuid::Uuid::new_v4().to_string();
            let body = callbacks::bulk_envelope(&id, &spec.pubsub, &spec.topic, &entries);
            let request = Request::post(path)
                .header(header::CONTENT_TYPE, "application/json")
                .extension(AppCall::BulkTopicEvent {
                    pubsub: spec.pubsub.clone(),
                    topic: spec.topic.clone(),
                })
                .body(Body::from(body));
            let answers = match request {
                Err(e) => {
                    vec![AppVerdict::Retry(format!("cannot build the request: {e}")); ids.len()]
                }
                Ok(req) => {
                    let limit = MAX_ANSWER + ids.len() * MAX_ANSWER_PER_ENTRY;
                    let n = ids.len();
                    self.call_app(
                        path,
                        req,
                        limit,
                        |status, body| callbacks::bulk_verdicts(status, body, &ids),
                        |why| vec![AppVerdict::Retry(why); n],
                        |vs: &Vec<AppVerdict>| judge_all(vs),
                    )
                    .await
                }
            };
            for (i, verdict) in members.into_iter().zip(answers) {
                verdicts[i] = Some(verdict);
            }
        }
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| AppVerdict::Retry("not delivered".into())))
            .collect()
    }

    /// Settles one delivery by the app's verdict: ack, drop (ack), redeliver, or move it
    /// to the dead-letter topic once its attempts ran out.
    async fn settle(&self, delivery: Delivery, verdict: AppVerdict, elapsed: Duration) {
        let spec = &self.sub.spec;
        let msg = &delivery.message;
        let stats = &self.rt.delivery_stats;
        let count = |pick: fn(&crate::metrics::Ingress) -> &crate::metrics::Series| {
            if let Some(ingress) = &self.ingress {
                pick(ingress).record(elapsed);
            }
        };
        let settled = match verdict {
            AppVerdict::Success => {
                count(|i| &i.success);
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                delivery.ack().await
            }
            AppVerdict::Drop(why) => {
                count(|i| &i.drop);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pubsub = spec.pubsub,
                    topic = spec.topic,
                    id = msg.id,
                    "dropping a message: {why}"
                );
                delivery.ack().await
            }
            AppVerdict::Retry(why) => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let attempt = msg.delivery_attempt;
                let (exhausted, backoff) = match &self.retry {
                    Some(retry) => (
                        !retry.allows(attempt),
                        retry.delay(
                            attempt.saturating_sub(1),
                            crate::resiliency::retry::jitter(),
                        ),
                    ),
                    None => (
                        attempt >= self.rt.delivery.max_attempts,
                        self.rt.delivery.backoff(attempt),
                    ),
                };
                match (&spec.dead_letter_topic, exhausted) {
                    (Some(dlt), true) => {
                        let moved = self.dead_letter(dlt, delivery, &why).await;
                        count(match moved.1 {
                            true => |i| &i.dead_letter,
                            false => |i| &i.retry,
                        });
                        moved.0
                    }
                    _ => {
                        count(|i| &i.retry);
                        tracing::debug!(
                            pubsub = spec.pubsub,
                            topic = spec.topic,
                            id = msg.id,
                            attempt,
                            "redelivering: {why}"
                        );
                        delivery.nack(backoff).await
                    }
                }
            }
        };
        if let Err(e) = settled {
            // The broker redelivers what it did not record as settled.
            tracing::warn!(pubsub = spec.pubsub, topic = spec.topic, error = %e, "settling a delivery failed");
        }
    }

    /// `POST`s the message to `path` on the app and reads its verdict.
    async fn post(&self, path: &str, msg: &Message, glance: &cloudevent::Glance) -> AppVerdict {
        let content_type = if glance.is_cloudevent {
            CLOUDEVENT_CONTENT_TYPE
        } else {
            msg.content_type
                .as_deref()
                .unwrap_or("application/octet-stream")
        };
        let mut builder = Request::post(path).header(header::CONTENT_TYPE, content_type);
        // The delivery's span is the child of the publisher's (from the event), and the
        // parent the subscriber sees; without tracing the event's context goes on as it is.
        let mut span = self.rt.tracer.as_ref().map(|t| {
            let parent = glance
                .traceparent
                .as_deref()
                .and_then(|tp| trellis_trace::SpanContext::from_headers(tp, None));
            let mut span = t.span_with(trellis_trace::SpanKind::Consumer, parent.as_ref(), || {
                format!("deliver {}", self.sub.spec.topic).into()
            });
            if span.is_recording() {
                span.set_attribute("messaging.system", "dapr");
                span.set_attribute("messaging.destination.name", self.sub.spec.topic.clone());
                span.set_attribute("trellis.component", self.sub.spec.pubsub.clone());
                span.set_attribute("url.path", path.to_string());
            }
            span
        });
        match (&span, &glance.traceparent) {
            (Some(span), _) => {
                builder = builder.header("traceparent", span.context().traceparent());
            }
            (None, Some(tp)) => builder = builder.header("traceparent", tp.as_str()),
            (None, None) => {}
        }
        let mut req = match builder.body(Body::from(msg.data.clone())) {
            Ok(r) => r,
            Err(e) => return AppVerdict::Retry(format!("cannot build the request: {e}")),
        };
        req.extensions_mut().insert(AppCall::TopicEvent {
            pubsub: self.sub.spec.pubsub.clone(),
            topic: self.sub.spec.topic.clone(),
        });
        let call = self.call_app(
            path,
            req,
            MAX_ANSWER,
            callbacks::app_verdict,
            AppVerdict::Retry,
            |v: &AppVerdict| judge_all(std::slice::from_ref(v)),
        );
        // The delivery's span is the current one for the call, so that the inbound policy's
        // events (a timeout, an open breaker) are spans of this delivery.
        let verdict = match &span {
            Some(span) => crate::trace::scoped(span.context().clone(), call).await,
            None => call.await,
        };
        if let Some(span) = &mut span {
            match &verdict {
                AppVerdict::Success => {}
                AppVerdict::Retry(why) => span.set_error(format!("retry: {why}")),
                AppVerdict::Drop(why) => span.set_error(format!("drop: {why}")),
            }
        }
        verdict
    }

    /// Moves a message that ran out of attempts to `topic` on the same pub/sub; the
    /// settlement's result, and whether the message was moved (else it is redelivered).
    async fn dead_letter(
        &self,
        topic: &str,
        delivery: Delivery,
        why: &str,
    ) -> (Result<(), trellis_pubsub::PubSubError>, bool) {
        let msg = &delivery.message;
        let req = PublishRequest {
            topic: topic.to_string(),
            data: msg.data.clone(),
            content_type: msg.content_type.clone(),
            metadata: msg.metadata.clone(),
            ttl: None,
        };
        match self.component.broker.publish(req).await {
            Ok(()) => {
                self.rt
                    .delivery_stats
                    .dead_lettered
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    pubsub = self.sub.spec.pubsub,
                    topic = self.sub.spec.topic,
                    dead_letter_topic = topic,
                    id = msg.id,
                    attempts = msg.delivery_attempt,
                    "moved a message to the dead-letter topic: {why}"
                );
                (delivery.ack().await, true)
            }
            Err(e) => {
                tracing::warn!(dead_letter_topic = topic, error = %e, "dead-lettering failed; redelivering");
                let after = self.rt.delivery.max_backoff;
                (delivery.nack(after).await, false)
            }
        }
    }
}

/// A request to the app failed, for its inbound breaker, when any event in it is to be
/// retried (a dropped event was answered, not failed).
fn judge_all(verdicts: &[AppVerdict]) -> Verdict {
    match verdicts.iter().any(|v| matches!(v, AppVerdict::Retry(_))) {
        true => Verdict::Failure(Failure::Error),
        false => Verdict::Success,
    }
}
