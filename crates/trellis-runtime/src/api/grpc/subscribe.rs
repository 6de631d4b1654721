//! Streaming subscriptions (`SubscribeTopicEventsAlpha1`): an app subscribes over one
//! bidirectional stream instead of serving a port.
//!
//! The app's first message names the subscription (`initial_request`); the sidecar checks
//! it as Dapr does, joins the topic's consumer group (the app id, as for every
//! subscription), lists it in the metadata API as `STREAMING`, and answers
//! `initial_response`. From then on the sidecar sends each event as `event_message` (the
//! `TopicEventRequest` a gRPC app's `OnTopicEvent` gets) and the app answers each with
//! `event_processed {id, status}`.
//!
//! The stream is an [`AppChannel`] ([`StreamChannel`]) to the one delivery loop in
//! [`crate::delivery`], so routing aside, a streaming subscription is settled exactly as
//! the others: SUCCESS acks, RETRY nacks with the delivery policy's backoff and moves the
//! event to the dead-letter topic once its attempts run out, DROP acks and counts it.
//!
//! The subscription ends with the stream: when the app closes its side or goes away, the
//! events it has not answered are nacked at once (redelivered to the group, so a new
//! stream gets them); when the sidecar stops, the app gets the graceful-shutdown time to
//! answer the events it holds, then the stream ends with UNAVAILABLE.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Status, Streaming};
use trellis_proto::runtime as pb;
use trellis_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Upstream;
use trellis_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Downstream;

use super::convert;
use super::status::to_status;
use crate::Body;
use crate::api::ops::pubsub as pubsub_ops;
use crate::config::AppHealthCheck;
use crate::invoke::{AppCall, AppChannel, InvokeError};
use crate::runtime::Runtime;
use crate::subscriptions::{ActiveSubscription, SubscriptionSpec};

/// How long a new stream may take to send its `initial_request` before it is ended.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(30);

/// Messages queued for the app beyond those its connection is sending; delivery waits
/// when the app reads slower than events arrive.
const OUTBOUND_QUEUE: usize = 64;

type Outbound = Result<pb::SubscribeTopicEventsResponseAlpha1, Status>;

/// What the sidecar sends down a streaming subscription.
pub type EventStream = Pin<Box<dyn Stream<Item = Outbound> + Send>>;

/// `SubscribeTopicEventsAlpha1`: reads and checks the first message, joins the group,
/// and returns the stream of events; the subscription runs in a task of its own.
pub async fn subscribe(
    rt: Arc<Runtime>,
    request: tonic::Request<Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
) -> Result<tonic::Response<EventStream>, Status> {
    let mut upstream = request.into_inner();
    let mut stopping = rt.stopping();
    let first = tokio::select! {
        m = tokio::time::timeout(FIRST_MESSAGE_WAIT, upstream.message()) => m,
        _ = stopping.wait_for(|s| *s) => return Err(shutting_down()),
    };
    let initial = match first {
        Err(_) => {
            return Err(Status::deadline_exceeded(format!(
                "no initial request within {}s of opening the stream",
                FIRST_MESSAGE_WAIT.as_secs()
            )));
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            return Err(Status::cancelled(
                "the stream ended before its initial request",
            ));
        }
        Ok(Ok(Some(msg))) => match msg.subscribe_topic_events_request_type {
            Some(Upstream::InitialRequest(initial)) => initial,
            _ => return Err(Status::invalid_argument("initial request is required")),
        },
    };
    // Dapr's own words for these two, before the checks every pub/sub request gets.
    if initial.pubsub_name.is_empty() {
        return Err(Status::invalid_argument("pubsubName is required"));
    }
    if initial.topic.is_empty() {
        return Err(Status::invalid_argument("topic is required"));
    }
    let component = pubsub_ops::subscribe_target(&rt, &initial.pubsub_name, &initial.topic)
        .map_err(to_status)?
        .clone();
    let spec = SubscriptionSpec::streaming(
        initial.pubsub_name,
        initial.topic,
        initial.metadata.into_iter().collect(),
        initial.dead_letter_topic.filter(|t| !t.is_empty()),
    );
    let sub = ActiveSubscription::compile(spec).map_err(Status::invalid_argument)?;
    let subscription = component
        .broker
        .subscribe(crate::delivery::subscribe_request(&rt, &sub))
        .await
        .map_err(|e| {
            Status::internal(format!(
                "failed to create subscription for {}: {e}",
                sub.spec.pubsub
            ))
        })?;
    let (out, events) = mpsc::channel(OUTBOUND_QUEUE);
    let initial_response = pb::SubscribeTopicEventsResponseAlpha1 {
        subscribe_topic_events_response_type: Some(Downstream::InitialResponse(
            pb::SubscribeTopicEventsResponseInitialAlpha1 {},
        )),
    };
    // The queue is new and empty: this cannot fail.
    let _ = out.try_send(Ok(initial_response));
    let session = Session {
        listed: rt.list_stream(sub.spec.clone()),
        channel: Arc::new(StreamChannel::new(out)),
        rt,
    };
    tracing::info!(
        pubsub = sub.spec.pubsub,
        topic = sub.spec.topic,
        "streaming subscription opened"
    );
    tokio::spawn(session.run(sub, component, subscription, upstream));
    let events =
        futures_util::stream::unfold(
            events,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
    Ok(tonic::Response::new(Box::pin(events)))
}

fn shutting_down() -> Status {
    Status::unavailable("the sidecar is shutting down")
}

/// One open streaming subscription.
struct Session {
    rt: Arc<Runtime>,
    channel: Arc<StreamChannel>,
    /// Its entry in the metadata API, removed when the session ends.
    listed: crate::runtime::ListedStream,
}

impl Session {
    /// Delivers until the stream or the sidecar ends, passing the app's answers on.
    async fn run(
        self,
        sub: ActiveSubscription,
        component: Arc<crate::pubsub::PubSubComponent>,
        subscription: Box<dyn trellis_pubsub::Subscription>,
        mut upstream: Streaming<pb::SubscribeTopicEventsRequestAlpha1>,
    ) {
        let (pubsub, topic) = (sub.spec.pubsub.clone(), sub.spec.topic.clone());
        let (stop, stop_rx) = watch::channel(false);
        let channel: Arc<dyn AppChannel> = self.channel.clone();
        let mut delivering = tokio::spawn(crate::delivery::deliver(
            self.rt.clone(),
            channel,
            sub,
            component,
            subscription,
            stop_rx,
        ));
        let mut stopping = self.rt.stopping();
        let mut reading = true;
        let mut ending: Option<Status> = None;
        loop {
            tokio::select! {
                _ = &mut delivering => break,
                m = upstream.message(), if reading => {
                    let gone = match m {
                        Ok(Some(msg)) => match msg.subscribe_topic_events_request_type {
                            Some(Upstream::EventProcessed(answer)) => {
                                self.channel.answer(answer);
                                None
                            }
                            Some(Upstream::InitialRequest(_)) => Some(Some(Status::invalid_argument(
                                "duplicate initial request received",
                            ))),
                            None => Some(Some(Status::invalid_argument(
                                "a message after the initial request must be event_processed",
                            ))),
                        },
                        // The app closed its side or went away: the subscription ends, as
                        // in Dapr.
                        Ok(None) | Err(_) => Some(None),
                    };
                    if let Some(status) = gone {
                        reading = false;
                        ending = ending.or(status);
                        // Nobody will answer the events out now: they go back at once.
                        self.channel.close();
                        stop.send_replace(true);
                    }
                }
                () = self.channel.out.closed(), if reading => {
                    // The app stopped reading (its connection is gone).
                    reading = false;
                    self.channel.close();
                    stop.send_replace(true);
                }
                _ = stopping.wait_for(|s| *s), if !*stop.borrow() => {
                    // Keep reading answers: the app may still settle what it holds while
                    // delivery drains.
                    ending = ending.or_else(|| Some(shutting_down()));
                    stop.send_replace(true);
                }
            }
        }
        self.channel.close();
        drop(self.listed);
        tracing::info!(pubsub, topic, "streaming subscription closed");
        if let Some(status) = ending
            .or_else(|| reading.then(|| Status::unavailable("the broker closed the subscription")))
        {
            let _ = self.channel.out.send(Err(status)).await;
        }
    }
}

/// The answers a stream still owes, by event id. Ids are the CloudEvents' own, so two
/// events out at once may share one; their answers are taken in the order they were sent.
#[derive(Debug, Default)]
struct Pending {
    closed: bool,
    waiting: HashMap<String, VecDeque<oneshot::Sender<i32>>>,
}

/// A streaming subscription as the channel delivery sends events to: each
/// [`AppCall::TopicEvent`] goes down the stream and its answer comes back as the
/// `{"status": ...}` an HTTP app would have given.
#[derive(Debug)]
pub struct StreamChannel {
    out: mpsc::Sender<Outbound>,
    pending: Mutex<Pending>,
}

impl StreamChannel {
    fn new(out: mpsc::Sender<Outbound>) -> Self {
        Self {
            out,
            pending: Mutex::new(Pending::default()),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the app's answer to the delivery waiting for it.
    fn answer(&self, answer: pb::SubscribeTopicEventsRequestProcessedAlpha1) {
        // No status is SUCCESS, as protobuf's default and Dapr read it.
        let status = answer.status.map_or(0, |s| s.status);
        let waiter = {
            let mut pending = self.pending();
            let waiter = pending
                .waiting
                .get_mut(&answer.id)
                .and_then(VecDeque::pop_front);
            if pending
                .waiting
                .get(&answer.id)
                .is_some_and(VecDeque::is_empty)
            {
                pending.waiting.remove(&answer.id);
            }
            waiter
        };
        match waiter {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => tracing::warn!(id = answer.id, "an answer for no event awaiting one"),
        }
    }

    /// Fails every delivery still waiting, and those to come.
    fn close(&self) {
        let mut pending = self.pending();
        pending.closed = true;
        pending.waiting.clear();
    }

    async fn topic_event(
        &self,
        path: &str,
        pubsub: &str,
        topic: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (event, _) = super::app_channel::topic_event_request(req, pubsub, topic, path).await?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending();
            if pending.closed {
                return Err(stream_closed());
            }
            pending
                .waiting
                .entry(event.id.clone())
                .or_default()
                .push_back(tx);
        }
        let message = pb::SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(Downstream::EventMessage(event)),
        };
        if self.out.send(Ok(message)).await.is_err() {
            return Err(stream_closed());
        }
        // Dropped unanswered when the stream closes.
        let status = rx.await.map_err(|_| stream_closed())?;
        let mut resp = Response::new(Body::from(
            json!({ "status": convert::status_name(status) }).to_string(),
        ));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

fn stream_closed() -> InvokeError {
    InvokeError::AppChannel("the subscription stream is closed".into())
}

#[async_trait]
impl AppChannel for StreamChannel {
    async fn call(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        match req.extensions().get::<AppCall>().cloned() {
            Some(AppCall::TopicEvent { pubsub, topic }) => {
                self.topic_event(path_and_query, &pubsub, &topic, req).await
            }
            // A streaming subscription has no bulk delivery, and the stream is no way to
            // invoke the app.
            _ => Err(InvokeError::AppChannel(
                "a subscription stream only takes single topic events".into(),
            )),
        }
    }

    /// Never probed: the stream's own life is its health.
    async fn probe(&self, _check: &AppHealthCheck) -> bool {
        !self.pending().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn processed(id: &str, status: Option<i32>) -> pb::SubscribeTopicEventsRequestProcessedAlpha1 {
        pb::SubscribeTopicEventsRequestProcessedAlpha1 {
            id: id.into(),
            status: status.map(|status| pb::TopicEventResponse { status }),
        }
    }

    async fn deliver(channel: &StreamChannel, body: &str) -> Result<String, InvokeError> {
        let req = Request::post("/")
            .header(header::CONTENT_TYPE, "application/cloudevents+json")
            .extension(AppCall::TopicEvent {
                pubsub: "p".into(),
                topic: "t".into(),
            })
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = channel.call("/", req).await?;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn answers_reach_their_events_in_order_and_close_fails_the_rest() {
        let (out, mut events) = mpsc::channel(8);
        let channel = Arc::new(StreamChannel::new(out));
        let ce = r#"{"id":"same","specversion":"1.0","datacontenttype":"text/plain","data":"x"}"#;
        let first = tokio::spawn({
            let c = channel.clone();
            async move { deliver(&c, ce).await }
        });
        let sent = events.recv().await.unwrap().unwrap();
        let Some(Downstream::EventMessage(ev)) = sent.subscribe_topic_events_response_type else {
            panic!("not an event: {sent:?}")
        };
        assert_eq!((ev.id.as_str(), ev.path.as_str()), ("same", "/"));
        assert_eq!(ev.data, b"x");
        let second = tokio::spawn({
            let c = channel.clone();
            async move { deliver(&c, ce).await }
        });
        events.recv().await.unwrap().unwrap();
        channel.answer(processed("same", Some(2)));
        assert_eq!(first.await.unwrap().unwrap(), r#"{"status":"DROP"}"#);
        channel.answer(processed("unknown", Some(1)));
        channel.answer(processed("same", None));
        assert_eq!(second.await.unwrap().unwrap(), r#"{"status":"SUCCESS"}"#);

        let third = tokio::spawn({
            let c = channel.clone();
            async move { deliver(&c, ce).await }
        });
        events.recv().await.unwrap().unwrap();
        channel.close();
        assert!(third.await.unwrap().is_err(), "closing fails the waiting");
        assert!(deliver(&channel, ce).await.is_err(), "and those to come");
    }
}
