//! Streaming subscriptions (`SubscribeTopicEventsAlpha1`) against in-process sidecars: the
//! app needs no port; events arrive on the stream as `TopicEventRequest`s and are settled
//! by the app's answers with the same rules as HTTP delivery; the subscription lives and is
//! listed exactly as long as its stream, and nothing is lost when the app goes away.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status};
use trellis_proto::runtime::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as Up;
use trellis_proto::runtime::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Down;
use trellis_proto::runtime::topic_event_response::TopicEventResponseStatus;
use trellis_proto::runtime::{self as pb, dapr_client::DaprClient};
use trellis_runtime::{DeliveryPolicy, RunningSidecar, SidecarConfig};
use trellis_test_support::{request, wait_until};

use crate::grpc::{assert_status, client};
use crate::pubsub::{pubsub_component, resources};
use crate::{grpc_sidecar, url};

const WAIT: Duration = Duration::from_secs(15);

/// Quick retries, three attempts: a dead-letter test takes milliseconds.
fn fast(c: &mut SidecarConfig) {
    c.delivery = DeliveryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_in_flight: 16,
    };
}

fn initial(pubsub: &str, topic: &str) -> pb::SubscribeTopicEventsRequestInitialAlpha1 {
    pb::SubscribeTopicEventsRequestInitialAlpha1 {
        pubsub_name: pubsub.into(),
        topic: topic.into(),
        ..Default::default()
    }
}

/// The app's end of a streaming subscription.
struct Stream {
    up: mpsc::Sender<pb::SubscribeTopicEventsRequestAlpha1>,
    down: tonic::Streaming<pb::SubscribeTopicEventsResponseAlpha1>,
}

impl Stream {
    /// Opens a stream whose first message is `first`; the sidecar's refusal as an error.
    async fn open_with(
        c: &mut DaprClient<Channel>,
        first: pb::SubscribeTopicEventsRequestAlpha1,
    ) -> Result<Stream, Status> {
        let (up, rx) = mpsc::channel(16);
        up.send(first).await.unwrap();
        let requests =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut down = c
            .subscribe_topic_events_alpha1(requests)
            .await?
            .into_inner();
        let reply = tokio::time::timeout(WAIT, down.message())
            .await
            .expect("an answer to the initial request")?
            .expect("a message");
        assert!(
            matches!(
                reply.subscribe_topic_events_response_type,
                Some(Down::InitialResponse(_))
            ),
            "{reply:?}"
        );
        Ok(Stream { up, down })
    }

    async fn open(
        c: &mut DaprClient<Channel>,
        initial: pb::SubscribeTopicEventsRequestInitialAlpha1,
    ) -> Result<Stream, Status> {
        let first = pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(Up::InitialRequest(initial)),
        };
        Self::open_with(c, first).await
    }

    async fn next_event(&mut self) -> pb::TopicEventRequest {
        let msg = tokio::time::timeout(WAIT, self.down.message())
            .await
            .expect("an event in time")
            .expect("an open stream")
            .expect("a message");
        match msg.subscribe_topic_events_response_type {
            Some(Down::EventMessage(ev)) => ev,
            other => panic!("not an event: {other:?}"),
        }
    }

    async fn answer(&self, id: &str, status: TopicEventResponseStatus) {
        let processed = pb::SubscribeTopicEventsRequestProcessedAlpha1 {
            id: id.into(),
            status: Some(pb::TopicEventResponse {
                status: status as i32,
            }),
        };
        self.send(Up::EventProcessed(processed)).await;
    }

    async fn send(&self, msg: Up) {
        let msg = pb::SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(msg),
        };
        self.up.send(msg).await.unwrap();
    }

    /// How the sidecar ended the stream: `None` for a clean end, else its status.
    async fn end(&mut self) -> Option<Status> {
        match tokio::time::timeout(WAIT, self.down.message())
            .await
            .expect("the stream to end in time")
        {
            Ok(None) => None,
            Ok(Some(msg)) => panic!("a message instead of the end: {msg:?}"),
            Err(status) => Some(status),
        }
    }
}

async fn publish(c: &mut DaprClient<Channel>, topic: &str, data: serde_json::Value) {
    c.publish_event(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: topic.into(),
        data: data.to_string().into_bytes(),
        data_content_type: "application/json".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The streaming subscriptions `/v1.0/metadata` lists, as `pubsub/topic`.
async fn listed(s: &RunningSidecar) -> Vec<String> {
    let md = request("GET", &url(s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    md["subscriptions"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .filter(|s| s["type"] == "STREAMING")
                .map(|s| format!("{}/{}", s["pubsubname"], s["topic"]).replace('"', ""))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_on_the_stream_and_are_settled_by_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("streamer", dir.path(), None, fast).await;
    let mut c = client(&s).await;
    let mut stream = Stream::open(&mut c, initial("pubsub", "orders"))
        .await
        .unwrap();

    // Listed while open, in both metadata APIs, with Dapr's single route `/`.
    assert_eq!(listed(&s).await, ["pubsub/orders"]);
    let md = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    assert_eq!(
        md["subscriptions"][0]["rules"],
        json!([{"match": "", "path": "/"}])
    );
    let md = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    let sub = &md.subscriptions[0];
    assert_eq!(
        (sub.pubsub_name.as_str(), sub.topic.as_str()),
        ("pubsub", "orders")
    );
    assert_eq!(sub.r#type, pb::PubsubSubscriptionType::Streaming as i32);

    // The event is the CloudEvent the publish made, as a gRPC app's OnTopicEvent gets it.
    let mut req = tonic::Request::new(pb::PublishEventRequest {
        pubsub_name: "pubsub".into(),
        topic: "orders".into(),
        data: br#"{"orderId":1}"#.to_vec(),
        data_content_type: "application/json".into(),
        ..Default::default()
    });
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    req.metadata_mut()
        .insert("traceparent", tp.parse().unwrap());
    c.publish_event(req).await.unwrap();
    let ev = stream.next_event().await;
    assert!(!ev.id.is_empty());
    assert_eq!(ev.source, "streamer");
    assert_eq!(ev.r#type, "com.dapr.event.sent");
    assert_eq!(ev.spec_version, "1.0");
    assert_eq!(ev.data_content_type, "application/json");
    assert_eq!(ev.data, br#"{"orderId":1}"#);
    assert_eq!(
        (ev.pubsub_name.as_str(), ev.topic.as_str()),
        ("pubsub", "orders")
    );
    assert_eq!(ev.path, "/");
    let ext = ev.extensions.clone().unwrap_or_default();
    assert!(
        matches!(
            ext.fields.get("traceparent").and_then(|v| v.kind.clone()),
            Some(prost_types::value::Kind::StringValue(v)) if v == tp
        ),
        "{ext:?}"
    );
    stream
        .answer(&ev.id, TopicEventResponseStatus::Success)
        .await;

    // RETRY: the same event comes back.
    publish(&mut c, "orders", json!({"orderId": 2})).await;
    let ev = stream.next_event().await;
    assert_eq!(ev.data, br#"{"orderId":2}"#);
    stream.answer(&ev.id, TopicEventResponseStatus::Retry).await;
    let again = stream.next_event().await;
    assert_eq!(
        (again.id.as_str(), again.data.as_slice()),
        (ev.id.as_str(), ev.data.as_slice())
    );
    stream
        .answer(&again.id, TopicEventResponseStatus::Success)
        .await;

    // DROP: gone for good, and counted.
    publish(&mut c, "orders", json!({"orderId": 3})).await;
    let ev = stream.next_event().await;
    stream.answer(&ev.id, TopicEventResponseStatus::Drop).await;
    let rt = s.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.dropped() == 1 }
        })
        .await
    );
    publish(&mut c, "orders", json!({"orderId": 4})).await;
    let ev = stream.next_event().await;
    assert_eq!(ev.data, br#"{"orderId":4}"#, "nothing came back");
    stream
        .answer(&ev.id, TopicEventResponseStatus::Success)
        .await;

    // A second initial request ends the stream, as in Dapr; the listing goes with it.
    stream
        .send(Up::InitialRequest(initial("pubsub", "orders")))
        .await;
    let end = stream.end().await.expect("a status");
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(
        end.message().contains("duplicate initial request"),
        "{end:?}"
    );
    assert!(listed(&s).await.is_empty());

    // Closing the app's side ends the subscription cleanly.
    let mut stream = Stream::open(&mut c, initial("pubsub", "orders"))
        .await
        .unwrap();
    assert_eq!(listed(&s).await, ["pubsub/orders"]);
    drop(stream.up);
    assert!(stream.down.message().await.is_ok_and(|m| m.is_none()));
    assert!(
        wait_until(WAIT, || async { listed(&s).await.is_empty() }).await,
        "no longer listed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_out_of_attempts_goes_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("streamdlq", dir.path(), None, fast).await;
    let mut c = client(&s).await;
    let mut dead = Stream::open(&mut c, initial("pubsub", "work-dead"))
        .await
        .unwrap();
    let mut work = initial("pubsub", "work");
    work.dead_letter_topic = Some("work-dead".into());
    let mut work = Stream::open(&mut c, work).await.unwrap();
    assert_eq!(listed(&s).await.len(), 2);

    publish(&mut c, "work", json!({"job": 1})).await;
    let mut id = String::new();
    for attempt in 1..=3 {
        let ev = work.next_event().await;
        assert_eq!(ev.data, br#"{"job":1}"#, "attempt {attempt}");
        work.answer(&ev.id, TopicEventResponseStatus::Retry).await;
        id = ev.id;
    }
    let moved = dead.next_event().await;
    assert_eq!(moved.id, id, "the same CloudEvent");
    assert_eq!(moved.data, br#"{"job":1}"#);
    dead.answer(&moved.id, TopicEventResponseStatus::Success)
        .await;
    let rt = s.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.dead_lettered() == 1 }
        })
        .await
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_first_messages_are_refused_with_dapr_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = pubsub_component(
        "events",
        &dir.path().join("events.db"),
        "  - name: subscriptionScopes\n    value: \"streamerr=allowed\"\n",
    );
    let s = grpc_sidecar("streamerr", dir.path(), None, |c| {
        c.resources = resources(&yaml)
    })
    .await;
    let mut c = client(&s).await;

    let processed = pb::SubscribeTopicEventsRequestAlpha1 {
        subscribe_topic_events_request_type: Some(Up::EventProcessed(Default::default())),
    };
    let err = Stream::open_with(&mut c, processed).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("initial request is required"),
        "{err:?}"
    );

    let err = Stream::open(&mut c, initial("", "t")).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("pubsubName is required"), "{err:?}");
    let err = Stream::open(&mut c, initial("events", ""))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("topic is required"), "{err:?}");

    // The same error as Dapr's for an unknown pub/sub, detail included.
    let err = Stream::open(&mut c, initial("nope", "t"))
        .await
        .err()
        .unwrap();
    assert_status(&err, Code::InvalidArgument, "DAPR_PUBSUB_NOT_FOUND");
    assert_eq!(err.message(), "pubsub nope is not found");

    // subscriptionScopes apply as to every subscription.
    let err = Stream::open(&mut c, initial("events", "secret"))
        .await
        .err()
        .unwrap();
    assert_status(&err, Code::PermissionDenied, "DAPR_PUBSUB_FORBIDDEN");
    let ok = Stream::open(&mut c, initial("events", "allowed"))
        .await
        .unwrap();
    assert_eq!(
        listed(&s).await,
        ["events/allowed"],
        "only the admitted one"
    );
    drop(ok);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_goes_away_loses_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("streamgone", dir.path(), None, fast).await;
    let mut c = client(&s).await;
    let mut first = Stream::open(&mut c, initial("pubsub", "jobs"))
        .await
        .unwrap();
    publish(&mut c, "jobs", json!({"n": 1})).await;
    let held = first.next_event().await;
    assert_eq!(held.data, br#"{"n":1}"#);

    // The app vanishes holding an unanswered event: its connection goes with it.
    drop(first);
    drop(c);
    let mut c = client(&s).await;
    assert!(
        wait_until(WAIT, || async { listed(&s).await.is_empty() }).await,
        "the subscription ended with the stream"
    );
    publish(&mut c, "jobs", json!({"n": 2})).await;

    // A new stream gets both: the one that was out, and the one published meanwhile.
    let mut second = Stream::open(&mut c, initial("pubsub", "jobs"))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let ev = second.next_event().await;
        second
            .answer(&ev.id, TopicEventResponseStatus::Success)
            .await;
        got.push(String::from_utf8(ev.data).unwrap());
    }
    got.sort();
    assert_eq!(got, [r#"{"n":1}"#, r#"{"n":2}"#]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_sidecar_ends_every_stream_with_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("streamstop", dir.path(), None, |c| {
        c.graceful_shutdown = Duration::from_secs(3);
    })
    .await;
    let mut c = client(&s).await;
    let mut open = Stream::open(&mut c, initial("pubsub", "t")).await.unwrap();

    // A stream that never sends its first message.
    let (idle_up, rx) = mpsc::channel::<pb::SubscribeTopicEventsRequestAlpha1>(1);
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut idle_client = c.clone();
    let idle = tokio::spawn(async move {
        idle_client
            .subscribe_topic_events_alpha1(requests)
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no stream held the shutdown for the whole drain time: {:?}",
        started.elapsed()
    );
    let end = open.end().await.expect("a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let idle = tokio::time::timeout(WAIT, idle).await.unwrap().unwrap();
    assert_eq!(idle.unwrap_err().code(), Code::Unavailable);
    drop(idle_up);
}
