//! Pub/sub through real `trellis` processes sharing one data directory: app A's sidecar
//! publishes, app B behind another process receives, also what was published while B's
//! process was down, and what was published before B's sidecar ever subscribed.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use trellis_test_support::{SubscriberApp, request, servers, wait_until};

use crate::{PATIENCE, sidecar};

fn data(app: &SubscriberApp) -> HashSet<String> {
    app.received_on("/orders")
        .iter()
        .filter_map(|r| r.json()["data"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_receives_also_what_was_published_while_it_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    let mut b = sidecar("app-b", dir.path()).app_port(app.port()).spawn();
    b.wait_healthy().await;
    let a = sidecar("app-a", dir.path()).spawn();
    a.wait_healthy().await;
    let publish = |body: String| {
        let url = a.url("/v1.0/publish/pubsub/orders");
        async move { request("POST", &url, &[("content-type", "text/plain")], body).await }
    };

    // B's consumer group starts when its sidecar subscribes: publish until it is there.
    let joined = wait_until(PATIENCE, || async {
        assert_eq!(publish("warm-up".into()).await.status, 204);
        tokio::time::sleep(Duration::from_millis(100)).await;
        !app.received_on("/orders").is_empty()
    })
    .await;
    assert!(joined, "B never received; B's output:\n{}", b.output());

    let first: HashSet<String> = (0..20).map(|i| format!("live {i}")).collect();
    for m in &first {
        assert_eq!(publish(m.clone()).await.status, 204);
    }
    assert!(
        wait_until(PATIENCE, || async { data(&app).is_superset(&first) }).await,
        "B got {:?}",
        data(&app)
    );
    let ev = app.received_on("/orders").last().unwrap().json();
    assert_eq!(ev["source"], "app-a");
    assert_eq!(ev["type"], "com.dapr.event.sent");

    // B's process goes down; A keeps publishing; B comes back and gets every message.
    b.signal(Signal::SIGTERM);
    assert!(b.wait_exit(PATIENCE).await.is_some(), "B did not stop");
    let before = app.received_on("/orders").len();
    let offline: HashSet<String> = (0..20).map(|i| format!("offline {i}")).collect();
    for m in &offline {
        assert_eq!(publish(m.clone()).await.status, 204);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.received_on("/orders").len(),
        before,
        "nobody delivers while B is down"
    );
    let b = sidecar("app-b", dir.path()).app_port(app.port()).spawn();
    b.wait_healthy().await;
    assert!(
        wait_until(PATIENCE, || async { data(&app).is_superset(&offline) }).await,
        "missing after restart: {:?}\nB's output:\n{}",
        offline.difference(&data(&app)).collect::<Vec<_>>(),
        b.output()
    );
}

/// kill -9 of the subscribing sidecar mid-stream: every message acknowledged to the
/// publisher is delivered at least once after a restart. Prints the duplicate rate. The
/// broker is configured by a component with a short ack deadline, so that the dead
/// process's leases run out quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_the_subscriber() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(
        resources.join("pubsub.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n  - name: ackDeadline\n    value: 2s\n",
            dir.path().join("broker.db").display()
        ),
    )
    .unwrap();
    let res = resources.display().to_string();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    let start_b = || {
        sidecar("app-b", dir.path())
            .app_port(app.port())
            .arg("--resources-path")
            .arg(res.clone())
            .spawn()
    };
    let mut b = start_b();
    b.wait_healthy().await;
    let a = sidecar("app-a", dir.path())
        .arg("--resources-path")
        .arg(res.clone())
        .spawn();
    a.wait_healthy().await;
    let url = a.url("/v1.0/publish/pubsub/orders");
    let joined = wait_until(PATIENCE, || async {
        let r = request("POST", &url, &[("content-type", "text/plain")], "warm-up").await;
        assert_eq!(r.status, 204);
        tokio::time::sleep(Duration::from_millis(100)).await;
        !app.received_on("/orders").is_empty()
    })
    .await;
    assert!(joined, "B never received; B's output:\n{}", b.output());

    let mut publishers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        publishers.push(tokio::spawn(async move {
            for i in (w..N).step_by(4) {
                let r = request(
                    "POST",
                    &url,
                    &[("content-type", "text/plain")],
                    format!("m{i}"),
                )
                .await;
                assert_eq!(r.status, 204, "{}", r.text());
            }
        }));
    }
    let some = wait_until(PATIENCE, || async { data(&app).len() >= N / 4 }).await;
    assert!(some, "too slow: {} received", data(&app).len());
    b.signal(Signal::SIGKILL);
    let _ = b.wait_exit(PATIENCE).await;
    for p in publishers {
        p.await.unwrap();
    }
    let b = start_b();
    b.wait_healthy().await;
    let sent: HashSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    let all = wait_until(PATIENCE, || async { data(&app).is_superset(&sent) }).await;
    assert!(
        all,
        "{} of {N} acknowledged messages never arrived\nB's output:\n{}",
        sent.difference(&data(&app)).count(),
        b.output()
    );
    let deliveries = app
        .received_on("/orders")
        .iter()
        .filter(|r| {
            r.json()["data"]
                .as_str()
                .is_some_and(|d| d.starts_with('m'))
        })
        .count();
    eprintln!(
        "kill -9 of the subscriber's sidecar: {N} messages, {deliveries} deliveries, duplicate rate {:.2}%",
        (deliveries - N) as f64 * 100.0 / N as f64
    );
}

/// A multi-app run where the publisher is up first (issue 15): A publishes before B's
/// sidecar has subscribed, and B still gets every event, because a new consumer group
/// starts at the beginning of what the topic holds, as in Dapr. `component` is the pub/sub
/// component's `spec` lines (type and metadata); `None` is the embedded broker.
async fn late_subscriber_gets_every_event(component: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let topic = servers::unique("late");
    let mut args = Vec::new();
    if let Some(spec) = component {
        let resources = dir.path().join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        std::fs::write(
            resources.join("pubsub.yaml"),
            format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n\
                 spec:\n  version: v1\n{spec}"
            ),
        )
        .unwrap();
        args = vec![
            "--resources-path".to_string(),
            resources.display().to_string(),
        ];
    }
    let a = args
        .iter()
        .fold(sidecar("app-a", dir.path()), |b, a| b.arg(a.clone()))
        .spawn();
    a.wait_healthy().await;
    let url = a.url(&format!("/v1.0/publish/pubsub/{topic}"));
    let sent: HashSet<String> = (0..5).map(|i| format!("early {i}")).collect();
    for m in &sent {
        let r = request("POST", &url, &[("content-type", "text/plain")], m.clone()).await;
        assert_eq!(r.status, 204, "{}\nA's output:\n{}", r.text(), a.output());
    }

    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": topic, "route": "/orders"}
    ])))
    .await;
    let b = args
        .iter()
        .fold(sidecar("app-b", dir.path()), |b, a| b.arg(a.clone()))
        .app_port(app.port())
        .spawn();
    b.wait_healthy().await;
    let all = wait_until(PATIENCE, || async { data(&app).is_superset(&sent) }).await;
    assert!(
        all,
        "B got {:?} of {sent:?}\nB's output:\n{}",
        data(&app),
        b.output()
    );
    // Each event once: the group started before the first one, not before a copy of it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.received_on("/orders").len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_started_after_its_publisher_gets_every_event_embedded() {
    late_subscriber_gets_every_event(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_started_after_its_publisher_gets_every_event_redis() {
    late_subscriber_gets_every_event(Some(
        "  type: pubsub.redis\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:6379\n",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_started_after_its_publisher_gets_every_event_jetstream() {
    late_subscriber_gets_every_event(Some(
        "  type: pubsub.jetstream\n  metadata:\n  - name: natsURL\n    value: nats://127.0.0.1:4222\n",
    ))
    .await;
}
