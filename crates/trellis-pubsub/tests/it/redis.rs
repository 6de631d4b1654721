//! The Redis Streams broker against the server on 127.0.0.1:6379: the conformance suite,
//! Dapr's stream layout, and recovery across a server restart.

use std::time::Duration;

use trellis_pubsub::conformance::Setup;
use trellis_pubsub::redis::RedisBroker;
use trellis_pubsub::{Metadata, PubSub, PubSubError, PublishRequest, SubscribeRequest};
use trellis_test_support::servers;

fn md(pairs: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::from_pairs([
        ("redisHost", "127.0.0.1:6379"),
        // Short, so the redelivery cases do not wait a minute.
        ("processingTimeout", "1s"),
        ("redeliverInterval", "200ms"),
    ]);
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

mod conformance {
    trellis_pubsub::conformance_tests!(async {
        let broker = super::RedisBroker::open(&super::md(&[])).await.unwrap();
        super::Setup::new(broker).redelivery_timeout(std::time::Duration::from_secs(5))
    }, lacks: [ttl]);
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn del(key: &str) {
    let _: () = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut raw().await)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_daprs_stream_layout() {
    let topic = servers::unique("trellis-it-ps-layout");
    let broker = RedisBroker::open(&md(&[("maxLenApprox", "1000")]))
        .await
        .unwrap();
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    broker
        .publish(PublishRequest::new(&topic, "{\"a\":1}"))
        .await
        .unwrap();
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(&topic)
        .arg("-")
        .arg("+")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    let dump = format!("{entries:?}");
    assert!(dump.contains("data"), "{dump}");
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&topic)
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert!(format!("{groups:?}").contains("app"), "{groups:?}");
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&d.message.data[..], b"{\"a\":1}");
    d.ack().await.unwrap();
    del(&topic).await;
}

#[tokio::test]
async fn refuses_tls_and_unreachable_servers() {
    let err = RedisBroker::open(&md(&[("enableTLS", "true")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
    let err = RedisBroker::open(&md(&[("redisHost", "127.0.0.1:1")]))
        .await
        .unwrap_err();
    assert!(matches!(err, PubSubError::Backend(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_without_reopening() {
    servers::require_nextest("redis_restart_recovers_without_reopening");
    let topic = servers::unique("trellis-it-ps-restart");
    let broker = RedisBroker::open(&md(&[])).await.unwrap();
    let mut sub = broker
        .subscribe(SubscribeRequest::new(&topic, "app"))
        .await
        .unwrap();
    let mut stopped = servers::REDIS.stop();
    let err = broker
        .publish(PublishRequest::new(&topic, "down"))
        .await
        .unwrap_err();
    assert!(matches!(err, PubSubError::Backend(_)), "{err}");
    stopped.start();
    broker
        .publish(PublishRequest::new(&topic, "up"))
        .await
        .unwrap();
    // This Redis keeps nothing on disk: the subscription re-creates its group, and then
    // receives what is published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "nothing received");
        broker
            .publish(PublishRequest::new(&topic, "again"))
            .await
            .unwrap();
        if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await
        {
            d.ack().await.unwrap();
            break;
        }
    }
    del(&topic).await;
}
