//! NATS JetStream (the nats-server on 127.0.0.1:4222): the conformance suite with per-topic
//! streams and with one named stream, and recovery across a server restart.

use std::time::{Duration, Instant};

use trellis_pubsub::jetstream::JetStreamBroker;
use trellis_pubsub::{Metadata, PubSub, PublishRequest, SubscribeRequest};
use trellis_test_support::servers::{self, NATS};

const URL: &str = "nats://127.0.0.1:4222";

async fn open(extra: &[(&str, &str)]) -> JetStreamBroker {
    let mut pairs = vec![("natsURL", URL), ("ackWait", "2s")];
    pairs.extend_from_slice(extra);
    JetStreamBroker::open(&Metadata::from_pairs(pairs))
        .await
        .unwrap()
}

mod conformance_per_topic_streams {
    trellis_pubsub::conformance_tests!(async {
        trellis_pubsub::conformance::Setup::new(super::open(&[]).await)
            .redelivery_timeout(std::time::Duration::from_secs(10))
    }, lacks: [ttl]);
}

mod conformance_named_stream {
    // One stream per case (the cases run in parallel), its subjects added topic by topic.
    trellis_pubsub::conformance_tests!(async {
        let name = trellis_test_support::servers::unique("TRELLIS_IT");
        trellis_pubsub::conformance::Setup::new(super::open(&[("streamName", &name)]).await)
            .redelivery_timeout(std::time::Duration::from_secs(10))
    }, lacks: [ttl]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_share_a_named_stream() {
    let name = servers::unique("TRELLIS_IT");
    let broker = open(&[("streamName", &name)]).await;
    let (a, b) = (servers::unique("js-a"), servers::unique("js-b"));
    let mut sa = broker
        .subscribe(SubscribeRequest::new(&a, "app"))
        .await
        .unwrap();
    let mut sb = broker
        .subscribe(SubscribeRequest::new(&b, "app"))
        .await
        .unwrap();
    broker
        .publish(PublishRequest::new(&a, "to-a"))
        .await
        .unwrap();
    broker
        .publish(PublishRequest::new(&b, "to-b"))
        .await
        .unwrap();
    let da = sa.next().await.unwrap().unwrap();
    let db = sb.next().await.unwrap().unwrap();
    assert_eq!(da.message.data, "to-a");
    assert_eq!(db.message.data, "to-b");
    assert!(da.message.id.starts_with(&name), "{}", da.message.id);
    da.ack().await.unwrap();
    db.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_restart_publish_fails_then_recovers() {
    servers::require_nextest("jetstream_restart_publish_fails_then_recovers");
    let broker = open(&[]).await;
    let topic = servers::unique("js-restart");
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    broker
        .publish(PublishRequest::new(&topic, "before"))
        .await
        .unwrap();
    let d = sub.next().await.unwrap().unwrap();
    assert_eq!(d.message.data, "before");
    d.ack().await.unwrap();

    let mut stopped = NATS.stop();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        broker.publish(PublishRequest::new(&topic, "while-down")),
    )
    .await
    .expect("publish while down returns")
    .unwrap_err();
    println!("publish while down: {err}");
    assert!(
        matches!(err, trellis_pubsub::PubSubError::Backend(_)),
        "{err}"
    );
    assert!(broker.ping().await.is_err());
    stopped.start();

    // The same broker object reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match broker.publish(PublishRequest::new(&topic, "after")).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                println!("publish after restart: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("publish after restart: {e}"),
        }
    }
    broker.ping().await.unwrap();
    // The subscription survives too (its pull requests are renewed after the reconnect).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), sub.next())
            .await
            .expect("a delivery after the restart");
        match next {
            Some(Ok(d)) => {
                // A publish that failed may still have been stored (at least once).
                let done = d.message.data == "after";
                assert!(done || d.message.data == "while-down", "{:?}", d.message);
                d.ack().await.unwrap();
                if done {
                    break;
                }
            }
            Some(Err(e)) => println!("receive after restart: {e}"),
            None => panic!("subscription ended"),
        }
    }
}
