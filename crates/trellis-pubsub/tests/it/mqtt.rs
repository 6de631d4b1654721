//! MQTT 3.1.1 (the Mosquitto on 127.0.0.1:1883): the conformance suite, a message from a
//! plain MQTT publisher, and recovery across a broker restart.

use std::time::{Duration, Instant};

use trellis_pubsub::mqtt::MqttBroker;
use trellis_pubsub::{Metadata, PubSub, PubSubError, PublishRequest, SubscribeRequest};
use trellis_test_support::servers::{self, MOSQUITTO};

async fn open() -> MqttBroker {
    // A consumer id of its own per broker, like two processes of an app.
    let id = servers::unique("trellis-it");
    MqttBroker::open(&Metadata::from_pairs([
        ("url", "tcp://127.0.0.1:1883"),
        ("consumerID", id.as_str()),
    ]))
    .await
    .unwrap()
}

mod conformance {
    trellis_pubsub::conformance_tests!(async {
        trellis_pubsub::conformance::Setup::new(super::open().await)
            .redelivery_timeout(std::time::Duration::from_secs(10))
    }, lacks: [ttl, replay]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_metadata_is_rejected() {
    for (k, v) in [
        ("url", "ssl://127.0.0.1:8883"),
        ("qos", "2"),
        ("retain", "maybe"),
    ] {
        let err = MqttBroker::open(&Metadata::from_pairs([(k, v)]))
            .await
            .unwrap_err();
        assert!(matches!(err, PubSubError::InvalidRequest(_)), "{k}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mqtt_payloads_are_delivered_as_they_are() {
    let broker = open().await;
    let topic = servers::unique("mqtt-plain");
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-q", "1", "-t", &topic, "-m", "raw"])
        .status()
        .await;
    if !status.is_ok_and(|s| s.success()) {
        println!("skipped: mosquitto_pub is not available");
        return;
    }
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.message.data, "raw");
    assert_eq!(d.message.topic, topic);
    assert_eq!(d.message.delivery_attempt, 1);
    d.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_restart_publish_fails_then_recovers() {
    servers::require_nextest("mqtt_restart_publish_fails_then_recovers");
    let broker = open().await;
    let topic = servers::unique("mqtt-restart");
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    broker
        .publish(PublishRequest::new(&topic, "before"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.message.data, "before");
    d.ack().await.unwrap();

    let mut stopped = MOSQUITTO.stop();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        broker.publish(PublishRequest::new(&topic, "while-down")),
    )
    .await
    .expect("publish while down returns")
    .unwrap_err();
    println!("publish while down: {err}");
    assert!(matches!(err, PubSubError::Backend(_)), "{err}");
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
    // The subscriber's persistent session reconnects and resubscribes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(deadline.into(), sub.next())
            .await
            .expect("a delivery after the restart");
        match next {
            Some(Ok(d)) => {
                // A publish that failed may still have been delivered (at least once).
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
