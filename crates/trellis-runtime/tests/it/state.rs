//! The state API over HTTP against in-process sidecars and the embedded store.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_test_support::request;

use crate::{sidecar, url};

async fn save(
    s: &trellis_runtime::RunningSidecar,
    store: &str,
    body: Value,
) -> trellis_test_support::HttpResponse {
    request(
        "POST",
        &url(s, &format!("/v1.0/state/{store}")),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

fn component(name: &str, db: &std::path::Path, extra: &str) -> trellis_resources::Component {
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n{extra}",
        db.display()
    );
    trellis_resources::parse_str(std::path::Path::new("c.yaml"), &yaml)
        .unwrap()
        .components
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_get_delete_with_etags() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("stateful", dir.path(), None, |_| {}).await;

    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    assert_eq!(r.status, 204, "missing key");

    let order = json!({"id": 1, "items": ["a", "b"], "total": 9.5});
    let r = save(
        &s,
        "statestore",
        json!([{"key": "order-1", "value": order}]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), order, "JSON stays JSON");
    let etag1 = r.header("etag").expect("etag header").to_string();

    let r = save(
        &s,
        "statestore",
        json!([{"key": "order-1", "value": {"id": 1, "v": 2}, "etag": etag1}]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    let etag2 = r.header("etag").unwrap().to_string();
    assert_ne!(etag1, etag2, "etag changes on every write");

    // Stale etag: 409 and nothing changes.
    let r = save(
        &s,
        "statestore",
        json!([{"key": "order-1", "value": "lost", "etag": etag1}]),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_STATE_SAVE");
    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    assert_eq!(r.json()["v"], 2);

    // first-write without an etag on an existing key fails; last-write wins.
    let r = save(
        &s,
        "statestore",
        json!([{"key": "order-1", "value": 1, "options": {"concurrency": "first-write"}}]),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = save(&s, "statestore", json!([{"key": "order-1", "value": 3}])).await;
    assert_eq!(r.status, 204);

    let r = request(
        "DELETE",
        &url(&s, "/v1.0/state/statestore/order-1"),
        &[("if-match", &etag2)],
        "",
    )
    .await;
    assert_eq!(r.status, 409, "stale If-Match");
    assert_eq!(r.json()["errorCode"], "ERR_STATE_DELETE");
    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    let etag3 = r.header("etag").unwrap().to_string();
    let r = request(
        "DELETE",
        &url(&s, "/v1.0/state/statestore/order-1"),
        &[("if-match", &etag3)],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/state/statestore/order-1"), &[], "").await;
    assert_eq!(r.status, 204);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transactions_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("bulky", dir.path(), None, |_| {}).await;
    let r = save(
        &s,
        "statestore",
        json!([
            {"key": "p1", "value": {"org": "dev", "n": 3}},
            {"key": "p2", "value": {"org": "ops", "n": 1}},
            {"key": "p3", "value": {"org": "dev", "n": 2}},
        ]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore/bulk"),
        &[],
        json!({"keys": ["p1", "nope"]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let items = r.json();
    assert_eq!(items[0]["key"], "p1");
    assert_eq!(items[0]["data"]["n"], 3);
    assert!(items[0]["etag"].is_string());
    assert_eq!(items[1]["key"], "nope");
    assert!(items[1].get("data").is_none());

    // A transaction with one stale etag applies nothing.
    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore/transaction"),
        &[],
        json!({"operations": [
            {"operation": "upsert", "request": {"key": "p4", "value": {"org": "new"}}},
            {"operation": "delete", "request": {"key": "p2", "etag": "999999"}},
        ]})
        .to_string(),
    )
    .await;
    // Dapr answers 500 for any failed transaction, a stale ETag included.
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_STATE_TRANSACTION");
    let r = request("GET", &url(&s, "/v1.0/state/statestore/p4"), &[], "").await;
    assert_eq!(r.status, 204, "rolled back");

    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore/transaction"),
        &[],
        json!({"operations": [
            {"operation": "upsert", "request": {"key": "p4", "value": {"org": "dev", "n": 4}}},
            {"operation": "delete", "request": {"key": "p2"}},
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let r = request(
        "POST",
        &url(&s, "/v1.0-alpha1/state/statestore/query"),
        &[],
        json!({
            "filter": {"EQ": {"org": "dev"}},
            "sort": [{"key": "n", "order": "DESC"}],
            "page": {"limit": 2}
        })
        .to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let keys: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["p4", "p1"],
        "sorted, paged, keys without the app prefix"
    );
    let token = page["token"]
        .as_str()
        .expect("a token for the next page")
        .to_string();
    let r = request(
        "POST",
        &url(&s, "/v1.0-alpha1/state/statestore/query"),
        &[],
        json!({
            "filter": {"EQ": {"org": "dev"}},
            "sort": [{"key": "n", "order": "DESC"}],
            "page": {"limit": 2, "token": token}
        })
        .to_string(),
    )
    .await;
    let keys: Vec<String> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["p3"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_use_dapr_codes() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("errs", dir.path(), None, |_| {}).await;
    let r = request("GET", &url(&s, "/v1.0/state/nostore/k"), &[], "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_STATE_STORE_NOT_FOUND");
    let r = request("POST", &url(&s, "/v1.0/state/statestore"), &[], "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST");
    let r = save(&s, "statestore", json!([{"value": 1}])).await;
    assert_eq!(r.status, 400, "missing key");
    assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST");
    let r = save(
        &s,
        "statestore",
        json!([{"key": "k", "value": 1, "metadata": {"ttlInSeconds": "soon"}}]),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(
        "POST",
        &url(&s, "/v1.0-alpha1/state/statestore/query"),
        &[],
        json!({"filter": {"GT": {"a": 1}}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_raw_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("ttl", dir.path(), None, |_| {}).await;
    let r = save(
        &s,
        "statestore",
        json!([
            {"key": "short", "value": "v", "metadata": {"ttlInSeconds": "1"}},
            {"key": "text", "value": "plain,csv,text", "metadata": {"contentType": "text/csv"}},
        ]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/state/statestore/short"), &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("metadata.ttlexpiretime").is_some(),
        "expiry reported"
    );
    let r = request("GET", &url(&s, "/v1.0/state/statestore/text"), &[], "").await;
    assert_eq!(r.text(), "plain,csv,text", "non-JSON content stays raw");
    assert_eq!(r.header("content-type"), Some("text/csv"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = request("GET", &url(&s, "/v1.0/state/statestore/short"), &[], "").await;
    assert_eq!(r.status, 204, "expired");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefixes_and_scopes_isolate_apps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let a = sidecar("app-a", dir.path(), None, |c| {
        c.resources.components = vec![
            component("store", &db, ""),
            component("shared", &db, "  - name: keyPrefix\n    value: name\n"),
        ];
    })
    .await;
    let b = sidecar("app-b", dir.path(), None, |c| {
        c.resources.components = vec![
            component("store", &db, ""),
            component("shared", &db, "  - name: keyPrefix\n    value: name\n"),
        ];
    })
    .await;
    save(&a, "store", json!([{"key": "k", "value": "from a"}])).await;
    save(&b, "store", json!([{"key": "k", "value": "from b"}])).await;
    let r = request("GET", &url(&a, "/v1.0/state/store/k"), &[], "").await;
    assert_eq!(r.json(), "from a", "appid prefix keeps apps apart");
    save(&a, "shared", json!([{"key": "k", "value": "common"}])).await;
    let r = request("GET", &url(&b, "/v1.0/state/shared/k"), &[], "").await;
    assert_eq!(r.json(), "common", "name prefix shares keys");
    a.stop().await;
    b.stop().await;

    let c = sidecar("app-c", dir.path(), None, |c| {
        let mut comp = component("store", &db, "");
        comp.scopes = vec!["someone-else".into()];
        c.resources.components = vec![comp];
    })
    .await;
    let r = request("GET", &url(&c, "/v1.0/state/store/k"), &[], "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_STATE_STORE_NOT_CONFIGURED");
    let r = request("GET", &url(&c, "/v1.0/metadata"), &[], "").await;
    let components = r.json()["components"].clone();
    assert!(
        components
            .as_array()
            .is_none_or(|cs| cs.iter().all(|c| c["type"] != "state.sqlite")),
        "no state store: {}",
        r.text()
    );
    c.stop().await;
}

/// Redis goes away and comes back: the sidecar answers 500 with Redis's error meanwhile,
/// keeps serving everything else, and the same store works again afterwards without a
/// restart of the sidecar. Runs alone under nextest (`_restart_` in the name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_without_restarting_the_sidecar() {
    use trellis_test_support::servers::{REDIS, require_nextest, unique};
    require_nextest("redis_restart_recovers_without_restarting_the_sidecar");
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("rt");
    let redis_yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:6379\n  - name: keyPrefix\n    value: {prefix}\n"
    );
    let redis = trellis_resources::parse_str(std::path::Path::new("redis.yaml"), &redis_yaml)
        .unwrap()
        .components
        .remove(0);
    let local = component("local", &dir.path().join("local.db"), "");
    let s = sidecar("recovering", dir.path(), None, |c| {
        c.resources.components = vec![redis, local]
    })
    .await;

    let r = save(&s, "cache", json!([{"key": "k", "value": "before"}])).await;
    assert_eq!(r.status, 204, "{}", r.text());

    let mut stopped = tokio::task::block_in_place(|| REDIS.stop());
    let started = std::time::Instant::now();
    let r = request("GET", &url(&s, "/v1.0/state/cache/k"), &[], "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_STATE_GET");
    assert!(
        r.json()["message"].as_str().unwrap().len()
            > "fail to get k from state store cache: ".len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );
    let r = save(&s, "cache", json!([{"key": "k", "value": "during"}])).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["errorCode"], "ERR_STATE_SAVE");
    // Everything else keeps working.
    let r = save(&s, "local", json!([{"key": "k", "value": "fine"}])).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/healthz"), &[], "").await;
    assert_eq!(r.status, 204);

    tokio::task::block_in_place(|| stopped.start());
    let recovered = trellis_test_support::wait_until(Duration::from_secs(10), || async {
        save(&s, "cache", json!([{"key": "k", "value": "after"}]))
            .await
            .status
            == 204
    })
    .await;
    assert!(recovered, "the store did not recover after Redis came back");
    let r = request("GET", &url(&s, "/v1.0/state/cache/k"), &[], "").await;
    assert_eq!(r.json(), "after");
    s.stop().await;
}

/// Dapr reads request bodies with Go's case-insensitive key matching, and SDKs send
/// whatever casing their language likes: the keys of the wire types match in any case,
/// the keys inside a value are kept as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_keys_match_in_any_case_like_go() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("go-cased", dir.path(), None, |_| {}).await;
    let value = json!({"Key": "inner keys stay", "VALUE": 1});
    let r = save(
        &s,
        "statestore",
        json!([{"Key": "k1", "Value": value, "Options": {"Concurrency": "first-write"}}]),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/state/statestore/k1"), &[], "").await;
    assert_eq!(r.json(), value);
    // first-write was read: a second write without an etag conflicts.
    let r = save(
        &s,
        "statestore",
        json!([{"KEY": "k1", "value": 2, "options": {"CONCURRENCY": "first-write"}}]),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore/transaction"),
        &[],
        json!({"Operations": [{"Operation": "upsert", "Request": {"Key": "k2", "Value": "v"}}]})
            .to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore/bulk"),
        &[],
        json!({"Keys": ["k2"]}).to_string(),
    )
    .await;
    assert_eq!(r.json()[0]["data"], "v", "{}", r.text());
    s.stop().await;
}
