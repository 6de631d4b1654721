//! Pub/sub over HTTP against in-process sidecars, the embedded broker and subscriber apps:
//! publishing, CloudEvents, consumer groups, the delivery contract, dead letters, routing
//! rules, declarative subscriptions and errors.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_runtime::{DeliveryPolicy, RunningSidecar, SidecarConfig};
use trellis_test_support::{HttpResponse, SubscriberApp, request, wait_until};

use crate::{sidecar, url};

const WAIT: Duration = Duration::from_secs(15);

/// Short retries so the contract tests take milliseconds, not the default's seconds.
fn fast(c: &mut SidecarConfig) {
    c.delivery = DeliveryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_in_flight: 16,
    };
}

fn sub(topic: &str, route: &str) -> Value {
    json!({"pubsubname": "pubsub", "topic": topic, "route": route})
}

/// A subscriber sidecar for `app`, started once it has joined `n` consumer groups.
async fn subscriber(
    app_id: &str,
    dir: &Path,
    app: &SubscriberApp,
    n: u64,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> RunningSidecar {
    let s = sidecar(app_id, dir, Some(app.port()), |c| {
        fast(c);
        tweak(c);
    })
    .await;
    let rt = s.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.subscribed() >= n }
        })
        .await,
        "{app_id} did not subscribe"
    );
    s
}

async fn publish(
    s: &RunningSidecar,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> HttpResponse {
    request("POST", &url(s, path), headers, body).await
}

fn assert_error(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.json()["errorCode"], code, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_data_arrives_as_a_cloudevent() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([sub("orders", "/orders")]))).await;
    let s = subscriber("shop", dir.path(), &app, 1, |_| {}).await;
    let publisher = sidecar("checkout", dir.path(), None, |_| {}).await;

    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = publish(
        &publisher,
        "/v1.0/publish/pubsub/orders",
        &[
            ("content-type", "application/json"),
            ("traceparent", tp),
            ("tracestate", "k=v"),
        ],
        r#"{"orderId": 7}"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request(
        "PUT",
        &url(&publisher, "/v1.0/publish/pubsub/orders"),
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!(r.status, 204, "PUT publishes too: {}", r.text());
    let r = publish(
        &publisher,
        "/v1.0/publish/pubsub/orders",
        &[("content-type", "application/octet-stream")],
        vec![0xffu8, 0x00],
    )
    .await;
    assert_eq!(r.status, 204);

    let mut got = app.wait_for("/orders", 3, WAIT).await;
    assert_eq!(got.len(), 3);
    // Deliveries run concurrently: order them by content type (json, octet, text).
    got.sort_by_key(|r| r.json()["datacontenttype"].to_string());
    got.swap(1, 2);
    let ev = got[0].json();
    assert_eq!(got[0].content_type, "application/cloudevents+json");
    assert_eq!(ev["data"], json!({"orderId": 7}), "JSON stays JSON");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert!(uuid_like(ev["id"].as_str().unwrap()), "{ev}");
    assert_eq!(ev["source"], "checkout");
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert_eq!(ev["traceid"], tp);
    assert_eq!(ev["traceparent"], tp);
    assert_eq!(ev["tracestate"], "k=v");
    assert!(ev["time"].as_str().unwrap().ends_with('Z'), "{ev}");
    assert_eq!(got[0].headers["traceparent"], tp);
    assert_eq!(got[1].json()["data"], "hello", "text stays a string");
    assert_eq!(got[2].json()["data_base64"], "/wA=");

    // The metadata API lists the subscription and the embedded pub/sub.
    let md = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let subs = md["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{md}");
    assert_eq!(subs[0]["pubsubname"], "pubsub");
    assert_eq!(subs[0]["topic"], "orders");
    assert_eq!(subs[0]["type"], "PROGRAMMATIC");
    assert_eq!(subs[0]["rules"][0]["path"], "/orders");
    let components = md["components"].as_array().unwrap();
    assert!(
        components
            .iter()
            .any(|c| c["name"] == "pubsub" && c["type"] == "pubsub.sqlite"),
        "{md}"
    );
    assert!(
        dir.path().join("pubsub.db").exists(),
        "the embedded broker lives in the data dir"
    );
    publisher.stop().await;
    s.stop().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_payloads_and_app_cloudevents() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([sub("raw", "/raw"), sub("ce", "/ce")]))).await;
    let s = subscriber("rawsub", dir.path(), &app, 2, |_| {}).await;

    let r = publish(
        &s,
        "/v1.0/publish/pubsub/raw?metadata.rawPayload=true",
        &[("content-type", "text/csv")],
        "a,b,c",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.wait_for("/raw", 1, WAIT).await;
    assert_eq!(
        got[0].body.as_ref(),
        b"a,b,c",
        "raw payloads arrive as sent"
    );
    assert_eq!(got[0].content_type, "text/csv");

    let own = json!({"id": "my-id", "source": "elsewhere", "type": "order.created",
                     "specversion": "1.0", "data": {"n": 1}, "custom": "kept"});
    let r = publish(
        &s,
        "/v1.0/publish/pubsub/ce?metadata.ttlInSeconds=60",
        &[("content-type", "application/cloudevents+json")],
        own.to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let ev = app.wait_for("/ce", 1, WAIT).await[0].json();
    assert_eq!(ev["id"], "my-id");
    assert_eq!(ev["source"], "elsewhere");
    assert_eq!(ev["type"], "order.created");
    assert_eq!(ev["custom"], "kept");
    assert_eq!(ev["data"]["n"], 1);
    assert_eq!(ev["topic"], "ce");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert!(
        ev["expiration"].is_string(),
        "ttlInSeconds sets expiration: {ev}"
    );

    let r = publish(
        &s,
        "/v1.0/publish/pubsub/ce",
        &[("content-type", "application/cloudevents+json")],
        "not json",
    )
    .await;
    assert_error(&r, 500, "ERR_PUBSUB_CLOUD_EVENTS_SER");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_gets_every_message_and_instances_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let subs = json!([sub("events", "/events")]);
    let a = SubscriberApp::start(Some(subs.clone())).await;
    let b1 = SubscriberApp::start(Some(subs.clone())).await;
    let b2 = SubscriberApp::start(Some(subs)).await;
    let sa = subscriber("app-a", dir.path(), &a, 1, |_| {}).await;
    let sb1 = subscriber("app-b", dir.path(), &b1, 1, |_| {}).await;
    let sb2 = subscriber("app-b", dir.path(), &b2, 1, |_| {}).await;

    const N: usize = 60;
    for i in 0..N {
        let r = publish(
            &sa,
            "/v1.0/publish/pubsub/events",
            &[("content-type", "application/json")],
            json!({"i": i}).to_string(),
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let got_a = a.wait_for("/events", N, WAIT).await;
    assert_eq!(got_a.len(), N, "app-a gets every message");
    assert!(
        wait_until(WAIT, || async {
            b1.received().len() + b2.received().len() >= N
        })
        .await,
        "app-b's instances got {} + {}",
        b1.received().len(),
        b2.received().len()
    );
    // Give stray duplicates a moment to show up, then check each went to one instance.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<Value> = b1
        .received()
        .iter()
        .chain(b2.received().iter())
        .map(|r| r.json()["data"]["i"].clone())
        .collect();
    assert_eq!(ids.len(), N, "each message went to one instance of app-b");
    assert!(
        !b1.received().is_empty() && !b2.received().is_empty(),
        "both instances take a share: {} + {}",
        b1.received().len(),
        b2.received().len()
    );
    assert_eq!(
        ids.iter()
            .map(Value::to_string)
            .collect::<HashSet<_>>()
            .len(),
        N
    );
    for s in [sa, sb1, sb2] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_contract_status_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        "ok",
        "empty",
        "retry",
        "drop",
        "gone",
        "fail",
        "malformed",
        "text",
    ];
    let app = SubscriberApp::start(Some(Value::Array(
        topics.iter().map(|t| sub(t, &format!("/{t}"))).collect(),
    )))
    .await;
    app.respond("/empty", &[(200, "")]);
    app.respond(
        "/retry",
        &[
            (200, r#"{"status":"RETRY"}"#),
            (200, r#"{"status":"SUCCESS"}"#),
        ],
    );
    app.respond("/drop", &[(200, r#"{"status":"DROP"}"#)]);
    app.respond("/gone", &[(404, "")]);
    app.respond("/fail", &[(500, "boom"), (503, ""), (200, "")]);
    app.respond(
        "/malformed",
        &[(200, r#"{"status":42}"#), (200, r#"{"status":"SUCCESS"}"#)],
    );
    app.respond("/text", &[(200, "OK")]);
    let s = subscriber("contract", dir.path(), &app, topics.len() as u64, |_| {}).await;
    for t in topics {
        let r = publish(&s, &format!("/v1.0/publish/pubsub/{t}"), &[], t).await;
        assert_eq!(r.status, 204);
    }
    // Expected deliveries per topic: acked after the first, or after scripted retries.
    let expected = [
        ("ok", 1),
        ("empty", 1),
        ("retry", 2),
        ("drop", 1),
        ("gone", 1),
        ("fail", 3),
        ("malformed", 2),
        ("text", 1),
    ];
    for (t, n) in expected {
        let got = app.wait_for(&format!("/{t}"), n, WAIT).await;
        assert_eq!(got.len(), n, "{t}");
        let attempts: HashSet<_> = got.iter().map(|r| r.json()["id"].to_string()).collect();
        assert_eq!(attempts.len(), 1, "{t}: redeliveries are the same message");
    }
    // Settled means settled: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (t, n) in expected {
        assert_eq!(
            app.received_on(&format!("/{t}")).len(),
            n,
            "{t} delivered again"
        );
    }
    assert_eq!(
        s.runtime().delivery_stats.dropped(),
        2,
        "DROP and 404 are counted"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_messages_go_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "work", "route": "/work", "deadLetterTopic": "poison"},
        sub("poison", "/poison"),
        sub("stubborn", "/stubborn"),
    ])))
    .await;
    app.respond("/work", &[(500, "")]);
    app.respond(
        "/stubborn",
        &[(500, ""), (500, ""), (500, ""), (500, ""), (200, "")],
    );
    let s = subscriber("dlq", dir.path(), &app, 3, |_| {}).await;
    let r = publish(
        &s,
        "/v1.0/publish/pubsub/work",
        &[("content-type", "application/json")],
        r#"{"job":1}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = publish(&s, "/v1.0/publish/pubsub/stubborn", &[], "x").await;
    assert_eq!(r.status, 204);

    let dead = app.wait_for("/poison", 1, WAIT).await;
    assert_eq!(dead.len(), 1);
    let ev = dead[0].json();
    assert_eq!(
        ev["data"]["job"], 1,
        "the original event is dead-lettered: {ev}"
    );
    assert_eq!(ev["topic"], "work");
    assert_eq!(
        app.received_on("/work").len(),
        3,
        "max_attempts deliveries first"
    );
    assert_eq!(s.runtime().delivery_stats.dead_lettered(), 1);
    // Without a dead-letter topic the message keeps being retried past max_attempts.
    assert_eq!(app.wait_for("/stubborn", 5, WAIT).await.len(), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.received_on("/work").len(),
        3,
        "a dead-lettered message is acked"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules_pick_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "inventory", "routes": {
            "rules": [
                {"match": "event.type == \"widget\"", "path": "/widgets"},
                {"match": "event.data.qty > 10 && has(event.data.sku) && event.data.sku.startsWith(\"BIG\")", "path": "/bulk"},
            ],
            "default": "/other"}},
        {"pubsubname": "pubsub", "topic": "bad", "routes": {"rules": [{"match": "size(event.data) > 1", "path": "/never"}]}},
    ])))
    .await;
    // The unsupported rule is rejected at load time; the good subscription still runs.
    let s = subscriber("router", dir.path(), &app, 1, |_| {}).await;
    let ce = |ty: &str, data: Value| {
        json!({"id": uuid(), "source": "t", "type": ty, "specversion": "1.0", "data": data})
            .to_string()
    };
    let headers = [("content-type", "application/cloudevents+json")];
    for body in [
        ce("widget", json!({})),
        ce("gadget", json!({"qty": 50, "sku": "BIG-1"})),
        ce("gadget", json!({"qty": 50, "sku": "SMALL"})),
        ce("gadget", json!({"qty": 1})),
    ] {
        let r = publish(&s, "/v1.0/publish/pubsub/inventory", &headers, body).await;
        assert_eq!(r.status, 204);
    }
    assert_eq!(app.wait_for("/widgets", 1, WAIT).await.len(), 1);
    assert_eq!(app.wait_for("/bulk", 1, WAIT).await.len(), 1);
    assert_eq!(app.wait_for("/other", 2, WAIT).await.len(), 2);
    let md = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let subs = md["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "the bad subscription is not loaded: {md}");
    assert_eq!(subs[0]["rules"][0]["match"], "event.type == \"widget\"");
    assert_eq!(subs[0]["rules"][2]["path"], "/other");
    s.stop().await;
}

fn uuid() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

pub(crate) fn resources(yaml: &str) -> trellis_resources::Resources {
    trellis_resources::parse_str(Path::new("r.yaml"), yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_subscriptions_with_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: orders-sub\nspec:\n  pubsubname: pubsub\n  topic: orders\n  routes:\n    rules:\n    - match: event.data.vip == true\n      path: /vip\n    default: /orders\n  deadLetterTopic: orders-dead\nscopes:\n- scoped\n";
    let app = SubscriberApp::start(None).await;
    let s = subscriber("scoped", dir.path(), &app, 1, |c| {
        c.resources = resources(yaml)
    })
    .await;
    let other_app = SubscriberApp::start(None).await;
    let other = sidecar("unscoped", dir.path(), Some(other_app.port()), |c| {
        c.resources = resources(yaml)
    })
    .await;

    for body in [r#"{"vip":true}"#, r#"{"vip":false}"#] {
        let r = publish(
            &other,
            "/v1.0/publish/pubsub/orders",
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 204);
    }
    assert_eq!(app.wait_for("/vip", 1, WAIT).await.len(), 1);
    assert_eq!(app.wait_for("/orders", 1, WAIT).await.len(), 1);
    let md = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let sub = &md["subscriptions"][0];
    assert_eq!(sub["type"], "DECLARATIVE", "{md}");
    assert_eq!(sub["deadLetterTopic"], "orders-dead");
    assert_eq!(sub["rules"][0]["match"], "event.data.vip == true");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(other_app.received().is_empty(), "scoped out");
    let md = request("GET", &url(&other, "/v1.0/metadata"), &[], "")
        .await
        .json();
    assert!(md.get("subscriptions").is_none(), "{md}");

    // An unsupported rule fails start-up, naming the file.
    let bad = yaml.replace(
        "event.data.vip == true",
        "event.data.tags.exists(t, t == 'x')",
    );
    let mut config = SidecarConfig::new("scoped", dir.path());
    config.resources = resources(&bad);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = trellis_runtime::Sidecar::start(config, http, internal)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("r.yaml") && err.contains("unsupported routing expression"),
        "{err}"
    );
    other.stop().await;
    s.stop().await;
}

pub(crate) fn pubsub_component(name: &str, db: &Path, extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: pubsub.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n{extra}",
        db.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = pubsub_component(
        "events",
        &dir.path().join("events.db"),
        "  - name: publishingScopes\n    value: \"limited=allowed\"\n",
    );
    let s = sidecar("limited", dir.path(), None, |c| {
        c.resources = resources(&yaml)
    })
    .await;
    let r = publish(&s, "/v1.0/publish/nope/t", &[], "x").await;
    assert_error(&r, 404, "ERR_PUBSUB_NOT_FOUND");
    let r = publish(&s, "/v1.0/publish/events/", &[], "x").await;
    assert_error(&r, 404, "ERR_TOPIC_NAME_EMPTY");
    let r = publish(&s, "/v1.0/publish/events/secret", &[], "x").await;
    assert_error(&r, 403, "ERR_PUBSUB_FORBIDDEN");
    let r = publish(
        &s,
        "/v1.0/publish/events/allowed?metadata.ttlInSeconds=abc",
        &[],
        "x",
    )
    .await;
    assert_error(&r, 400, "ERR_PUBSUB_REQUEST_METADATA");
    let r = publish(&s, "/v1.0/publish/events/allowed", &[], "x").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let md = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let names: Vec<_> = md["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert!(
        names.contains(&json!("events")) && !names.contains(&json!("pubsub")),
        "a configured pub/sub replaces the default: {md}"
    );
    s.stop().await;

    // Pub/sub components exist, none for this app: not configured.
    let scoped = format!("{yaml}scopes:\n- someone-else\n");
    let s = sidecar("outsider", dir.path(), None, |c| {
        c.resources = resources(&scoped)
    })
    .await;
    let r = publish(&s, "/v1.0/publish/events/t", &[], "x").await;
    assert_error(&r, 400, "ERR_PUBSUB_NOT_CONFIGURED");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_failure_is_a_500_never_a_silent_204() {
    let dir = tempfile::tempdir().unwrap();
    // The embedded broker's file is a directory: the broker cannot open.
    std::fs::create_dir_all(dir.path().join("pubsub.db")).unwrap();
    let s = sidecar("unlucky", dir.path(), None, |_| {}).await;
    let r = publish(&s, "/v1.0/publish/pubsub/t", &[], "x").await;
    assert_error(&r, 500, "ERR_PUBSUB_PUBLISH_MESSAGE");
    let body = json!([
        {"entryId": "1", "event": {"a": 1}, "contentType": "application/json"},
        {"entryId": "2", "event": "text"},
    ]);
    let r = publish(
        &s,
        "/v1.0-alpha1/publish/bulk/pubsub/t",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    let json = r.json();
    assert_eq!(json["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    let ids: Vec<_> = json["failedEntries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entryId"].clone())
        .collect();
    assert_eq!(ids, vec![json!("1"), json!("2")]);
    assert!(
        json["failedEntries"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_publish_delivers_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([sub("bulk", "/bulk")]))).await;
    let s = subscriber("bulker", dir.path(), &app, 1, |_| {}).await;
    let body = json!([
        {"entryId": "a", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "b", "event": "plain text", "contentType": "text/plain"},
        {"entryId": "c", "event": {"id": "own", "source": "s", "type": "t", "specversion": "1.0", "data": "x"},
         "contentType": "application/cloudevents+json"},
        {"entryId": "d", "event": "raw!", "contentType": "text/plain", "metadata": {"rawPayload": "true"}},
    ]);
    for path in [
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        "/v1.0/publish/bulk/pubsub/bulk",
    ] {
        let r = publish(
            &s,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, 204, "{path}: {}", r.text());
    }
    // The JavaScript SDK spells it `entryID`; Dapr's Go decoder matches keys in any case.
    let js_sdk = json!([{"entryID": "e", "event": "from js", "contentType": "text/plain"}]);
    let r = publish(
        &s,
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        &[],
        js_sdk.to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.wait_for("/bulk", 9, WAIT).await;
    assert_eq!(got.len(), 9);
    let got: Vec<_> = got
        .into_iter()
        .filter(|r| r.json()["data"] != "from js")
        .collect();
    assert_eq!(got.len(), 8, "the entryID entry arrived once");
    // Deliveries run concurrently, so look entries up rather than rely on order.
    let count =
        |f: &dyn Fn(&trellis_test_support::Received) -> bool| got.iter().filter(|r| f(r)).count();
    assert_eq!(count(&|r| r.json()["data"]["n"] == 1), 2);
    assert_eq!(count(&|r| r.json()["data"] == "plain text"), 2);
    assert_eq!(count(&|r| r.json()["id"] == "own"), 2);
    assert_eq!(count(&|r| r.body.as_ref() == b"raw!"), 2);
    let r = publish(
        &s,
        "/v1.0-alpha1/publish/bulk/pubsub/bulk",
        &[],
        r#"[{"entryId":"x","event":1},{"entryId":"x","event":2}]"#,
    )
    .await;
    assert_error(&r, 400, "ERR_PUBSUB_EVENTS_SER");
    let r = publish(&s, "/v1.0-alpha1/publish/bulk/pubsub/bulk", &[], "{").await;
    assert_error(&r, 400, "ERR_PUBSUB_EVENTS_SER");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_after_a_restart_and_stop_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([sub("jobs", "/jobs")]))).await;
    let s = subscriber("worker", dir.path(), &app, 1, |_| {}).await;
    let started = std::time::Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );

    // Published while the subscriber is down: delivered once it is back.
    let publisher = sidecar("boss", dir.path(), None, |_| {}).await;
    for i in 0..5 {
        let r = publish(
            &publisher,
            "/v1.0/publish/pubsub/jobs",
            &[],
            format!("job {i}"),
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let s = subscriber("worker", dir.path(), &app, 1, |_| {}).await;
    let got = app.wait_for("/jobs", 5, WAIT).await;
    let data: HashSet<String> = got.iter().map(|r| r.json()["data"].to_string()).collect();
    let sent: HashSet<String> = (0..5)
        .map(|i| json!(format!("job {i}")).to_string())
        .collect();
    assert_eq!(data, sent);
    publisher.stop().await;
    s.stop().await;
}

/// The `data` of each event in a bulk delivery, in entry order.
fn bulk_data(r: &trellis_test_support::Received) -> Vec<String> {
    r.bulk_entries()
        .iter()
        .map(|e| e["event"]["data"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_subscribe_delivers_batches_settled_entry_by_entry() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([{
        "pubsubname": "pubsub", "topic": "batch",
        "routes": {"rules": [{"match": "event.data == \"special\"", "path": "/special"}], "default": "/batch"},
        "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 300}
    }])))
    .await;
    // m3 is dropped; m5 is retried once; m7 is left out of the first answer (so retried).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(HashSet::<String>::new()));
    let seen2 = seen.clone();
    app.respond_with("/batch", move |req| {
        let mut seen = seen2.lock().unwrap();
        let statuses: Vec<Value> = req
            .bulk_entries()
            .iter()
            .filter_map(|e| {
                let data = e["event"]["data"].as_str().unwrap_or_default().to_string();
                let first = seen.insert(data.clone());
                let status = match (data.as_str(), first) {
                    ("m3", _) => "DROP",
                    ("m5", true) => "RETRY",
                    ("m7", true) => return None,
                    _ => "SUCCESS",
                };
                Some(json!({"entryId": e["entryId"], "status": status}))
            })
            .collect();
        (200, json!({ "statuses": statuses }).to_string())
    });
    let s = subscriber("bulk-sub", dir.path(), &app, 1, |_| {}).await;
    let mut entries: Vec<Value> = (0..25)
        .map(|i| json!({"entryId": format!("e{i}"), "event": format!("m{i}"), "contentType": "text/plain"}))
        .collect();
    entries.insert(
        12,
        json!({"entryId": "sp", "event": "special", "contentType": "text/plain"}),
    );
    let r = publish(
        &s,
        "/v1.0-alpha1/publish/bulk/pubsub/batch",
        &[("content-type", "application/json")],
        Value::Array(entries).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // 25 events plus the redeliveries of m5 and m7.
    let delivered = |app: &SubscriberApp| -> Vec<String> {
        app.received_on("/batch")
            .iter()
            .flat_map(bulk_data)
            .collect()
    };
    assert!(
        wait_until(WAIT, || async { delivered(&app).len() >= 27 }).await,
        "got {:?}",
        delivered(&app)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = delivered(&app);
    assert_eq!(got.len(), 27, "{got:?}");
    let count = |d: &str| got.iter().filter(|g| *g == d).count();
    assert_eq!(count("m3"), 1, "a DROP entry is not redelivered");
    assert_eq!(count("m5"), 2, "a RETRY entry is redelivered");
    assert_eq!(
        count("m7"),
        2,
        "an entry missing from the answer is redelivered"
    );
    assert_eq!(count("m0"), 1);
    assert_eq!(count("special"), 0, "routed elsewhere");

    let batches = app.received_on("/batch");
    assert!(batches.iter().all(|b| b.bulk_entries().len() <= 10));
    assert!(
        batches.iter().any(|b| b.bulk_entries().len() > 1),
        "events travel in batches"
    );
    let first = batches[0].json();
    assert_eq!(first["type"], "com.dapr.event.sent.bulk");
    assert_eq!(first["pubsubname"], "pubsub");
    assert_eq!(first["topic"], "batch");
    let entry = &first["entries"][0];
    assert_eq!(entry["contentType"], "application/cloudevents+json");
    assert_eq!(entry["event"]["type"], "com.dapr.event.sent");
    assert!(entry["entryId"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(batches[0].content_type.starts_with("application/json"));
    // In order: the first batch holds the first events published (an ordered subscriber).
    assert_eq!(bulk_data(&batches[0])[0], "m0");

    let special = app.wait_for("/special", 1, WAIT).await;
    assert_eq!(bulk_data(&special[0]), ["special"]);
    assert_eq!(s.runtime().delivery_stats.dropped(), 1);
    drop(seen);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_subscriber_that_fails_gets_the_whole_batch_again() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([{
        "pubsubname": "pubsub", "topic": "flaky", "route": "/flaky",
        "bulkSubscribe": {"enabled": true, "maxMessagesCount": 50, "maxAwaitDurationMs": 200}
    }])))
    .await;
    app.respond("/flaky", &[(500, "boom"), (200, "not json")]);
    let s = subscriber("bulk-flaky", dir.path(), &app, 1, |_| {}).await;
    let entries: Vec<Value> = (0..5)
        .map(|i| json!({"entryId": format!("{i}"), "event": format!("f{i}"), "contentType": "text/plain"}))
        .collect();
    let r = publish(
        &s,
        "/v1.0-alpha1/publish/bulk/pubsub/flaky",
        &[],
        Value::Array(entries).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    // 500, then an answer that is not a status list: both retry every entry, until the
    // attempts run out and (without a dead-letter topic) the retries go on.
    let got = app.wait_for("/flaky", 3, WAIT).await;
    let all: Vec<String> = got.iter().flat_map(bulk_data).collect();
    for i in 0..5 {
        assert!(
            all.iter().filter(|d| **d == format!("f{i}")).count() >= 3,
            "f{i} should be delivered again after each failed answer: {all:?}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_subscriber_sees_the_topic_in_publish_order() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([sub("seq", "/seq")]))).await;
    let s = subscriber("ordered", dir.path(), &app, 1, |_| {}).await;
    // Bulk requests from one client, so there is one publish order to compare with.
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"entryId": format!("{i}"), "event": i.to_string(), "contentType": "text/plain"}))
            .collect();
        let r = publish(
            &s,
            "/v1.0-alpha1/publish/bulk/pubsub/seq",
            &[],
            Value::Array(entries).to_string(),
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let got = app.wait_for("/seq", N, WAIT).await;
    let order: Vec<usize> = got
        .iter()
        .map(|r| r.json()["data"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>());
    s.stop().await;
}
