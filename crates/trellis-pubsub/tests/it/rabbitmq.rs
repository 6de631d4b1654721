//! The RabbitMQ broker against the server on 127.0.0.1:5672: the conformance suite, refusing
//! what is not supported, and recovery across a broker restart.

use std::time::Duration;

use trellis_pubsub::conformance::Setup;
use trellis_pubsub::rabbitmq::RabbitBroker;
use trellis_pubsub::{Metadata, PubSub, PubSubError, PublishRequest, SubscribeRequest};
use trellis_test_support::servers;

fn md(pairs: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::from_pairs([("connectionString", "amqp://guest:guest@127.0.0.1:5672")]);
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

mod conformance {
    trellis_pubsub::conformance_tests!(async {
        let broker = super::RabbitBroker::open(&super::md(&[])).await.unwrap();
        super::Setup::new(broker).redelivery_timeout(std::time::Duration::from_secs(5))
    }, lacks: [replay]);
}

#[tokio::test]
async fn refuses_tls_and_unreachable_servers() {
    let err = RabbitBroker::open(&md(&[("enableTLS", "true")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
    let err = RabbitBroker::open(&md(&[("connectionString", "amqp://127.0.0.1:1")]))
        .await
        .unwrap_err();
    assert!(matches!(err, PubSubError::Backend(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_recovers_without_reopening() {
    servers::require_nextest("rabbitmq_restart_recovers_without_reopening");
    let topic = servers::unique("trellis-it-ps-restart");
    let broker = RabbitBroker::open(&md(&[])).await.unwrap();
    // The durable queue is declared now, so it keeps what is published after the restart.
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
    d.ack().await.unwrap();
    drop(sub);
    let mut stopped = servers::RABBITMQ.stop();
    let err = broker
        .publish(PublishRequest::new(&topic, "down"))
        .await
        .unwrap_err();
    assert!(matches!(err, PubSubError::Backend(_)), "{err}");
    stopped.start();
    broker
        .publish(PublishRequest::new(&topic, "after"))
        .await
        .unwrap();
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.data[..], b"after");
    d.ack().await.unwrap();
}
