//! Configuration subscriptions against in-process sidecars: an HTTP subscription delivers
//! each change to the app as Dapr does (`POST /configuration/<store>/<key>`), the gRPC one
//! streams them, unsubscribing stops them, and bad requests get Dapr's answers. The store is
//! written as another process would (a second store on the same file).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tonic::Code;
use trellis_configuration::Metadata;
use trellis_configuration::sqlite::SqliteConfigurationStore;
use trellis_proto::runtime as pb;
use trellis_test_support::{SubscriberApp, request};

use crate::grpc::{assert_status, client};
use crate::{grpc_sidecar, url};

const PATIENCE: Duration = Duration::from_secs(10);

/// The embedded store's file in `dir`, opened as `trellis config set` opens it.
async fn writer(dir: &Path) -> SqliteConfigurationStore {
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.join("configuration.db").display().to_string(),
    )]);
    SqliteConfigurationStore::open(&md).await.unwrap()
}

fn meta() -> BTreeMap<String, String> {
    BTreeMap::from([("source".to_string(), "test".to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_subscriptions_post_changes_to_the_app_until_unsubscribed() {
    let dir = tempfile::tempdir().unwrap();
    let store = writer(dir.path()).await;
    store.set("limit", "10", &meta()).await.unwrap();
    let app = SubscriberApp::start(None).await;
    let s = grpc_sidecar("config-sub", dir.path(), Some(app.port()), |_| {}).await;

    let r = request(
        "GET",
        &url(
            &s,
            "/v1.0/configuration/configstore/subscribe?key=limit&key=mode",
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());

    let v = store.set("mode", "fast", &meta()).await.unwrap();
    let got = app
        .wait_for("/configuration/configstore/mode", 1, PATIENCE)
        .await;
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(
        got[0].json(),
        json!({"id": id, "items": {"mode": {"value": "fast", "version": v.to_string(), "metadata": {"source": "test"}}}})
    );
    // A deletion: the item with nothing in it, as Dapr's JSON leaves empty fields out.
    assert!(store.delete("limit").await.unwrap());
    let got = app
        .wait_for("/configuration/configstore/limit", 1, PATIENCE)
        .await;
    assert_eq!(got[0].json(), json!({"id": id, "items": {"limit": {}}}));

    // Every key, on the alpha route.
    let r = request(
        "GET",
        &url(&s, "/v1.0-alpha1/configuration/configstore/subscribe"),
        &[],
        "",
    )
    .await;
    let every = r.json()["id"].as_str().unwrap().to_string();

    let r = request(
        "GET",
        &url(
            &s,
            &format!("/v1.0/configuration/configstore/{id}/unsubscribe"),
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ok": true}));
    let r = request(
        "GET",
        &url(
            &s,
            &format!("/v1.0/configuration/configstore/{id}/unsubscribe"),
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json(),
        json!({"message": format!("failed to unsubscribe to configuration request {id}: subscription with id {id} does not exist")})
    );

    // The unsubscribed one hears no more; the other one still does, in order.
    store.set("mode", "slow", &meta()).await.unwrap();
    store.set("marker", "m", &meta()).await.unwrap();
    let got = app
        .wait_for("/configuration/configstore/marker", 1, PATIENCE)
        .await;
    assert_eq!(got[0].json()["id"], every);
    let modes = app.received_on("/configuration/configstore/mode");
    assert!(
        modes
            .iter()
            .all(|m| m.json()["id"] == every || m.json()["items"]["mode"]["value"] == "fast"),
        "{:?}",
        modes.iter().map(|m| m.json()).collect::<Vec<_>>()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribe_requests_get_daprs_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("config-sub-bad", dir.path(), None, |_| {}).await;
    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/nope/subscribe?key=a"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_STORE_NOT_FOUND");
    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/nope/x/unsubscribe"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_STORE_NOT_FOUND");
    // No app to deliver to.
    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/configstore/subscribe?key=a"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["errorCode"], "ERR_APP_CHANNEL_NIL");

    // Too many keys: refused, by get and by subscribe, over both APIs; the sidecar goes on.
    // 10,000 keys make a URI longer than HTTP/1.1 servers take (64 KiB): a bare 414.
    let keys: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
    let query: String = keys.iter().map(|k| format!("key={k}&")).collect();
    for path in ["", "/subscribe"] {
        let status = raw_get(
            &s,
            &format!("/v1.0/configuration/configstore{path}?{query}"),
        )
        .await;
        assert!(status.contains(" 414 "), "{path}: {status}");
        // 1,001 keys fit in a URI: Dapr's error format, naming the limit.
        let query: String = keys[..1001].iter().map(|k| format!("key={k}&")).collect();
        let r = request(
            "GET",
            &url(
                &s,
                &format!("/v1.0/configuration/configstore{path}?{query}"),
            ),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["errorCode"], "ERR_MALFORMED_REQUEST", "{path}");
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("too many keys: 1001"), "{message}");
    }
    let mut c = client(&s).await;
    let err = c
        .get_configuration(pb::GetConfigurationRequest {
            store_name: "configstore".into(),
            keys: keys.clone(),
            metadata: Default::default(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ERR_MALFORMED_REQUEST");
    let err = c
        .subscribe_configuration(pb::SubscribeConfigurationRequest {
            store_name: "configstore".into(),
            keys,
            metadata: Default::default(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ERR_MALFORMED_REQUEST");
    let r = request("GET", &url(&s, "/v1.0/configuration/configstore"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_subscriptions_stream_changes_until_unsubscribed() {
    let dir = tempfile::tempdir().unwrap();
    let store = writer(dir.path()).await;
    let s = grpc_sidecar("config-sub-grpc", dir.path(), None, |_| {}).await;
    let mut c = client(&s).await;
    let req = |store: &str| pb::SubscribeConfigurationRequest {
        store_name: store.into(),
        keys: vec!["limit".into()],
        metadata: Default::default(),
    };
    let err = c.subscribe_configuration(req("nope")).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "ERR_CONFIGURATION_STORE_NOT_FOUND",
    );

    let mut stream = c
        .subscribe_configuration_alpha1(req("configstore"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(!first.id.is_empty() && first.items.is_empty(), "{first:?}");
    let v = store.set("limit", "7", &meta()).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.id, first.id);
    let item = &next.items["limit"];
    assert_eq!(
        (item.value.as_str(), item.version.clone()),
        ("7", v.to_string())
    );
    assert_eq!(
        item.metadata.get("source").map(String::as_str),
        Some("test")
    );

    let un = |id: &str| pb::UnsubscribeConfigurationRequest {
        store_name: "configstore".into(),
        id: id.into(),
    };
    let ok = c
        .unsubscribe_configuration(un(&first.id))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok && ok.message.is_empty(), "{ok:?}");
    // The stream ends with OK.
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    let again = c
        .unsubscribe_configuration_alpha1(un(&first.id))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.ok);
    assert!(again.message.contains("does not exist"), "{again:?}");
    s.stop().await;
}

/// The status line the sidecar answers a raw HTTP/1.1 `GET path` with (no client would
/// send a URI this long).
async fn raw_get(s: &trellis_runtime::RunningSidecar, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut conn = tokio::net::TcpStream::connect(s.http_addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A `configuration.postgres` component (the alias) whose channel the subscribe request
/// names, as Dapr's clients name it (`metadata.pgNotifyChannel`): a row written by the
/// operator reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_delivers_rows_its_trigger_announces() {
    let table = trellis_test_support::servers::unique("cfgsub");
    let dsn = "host=127.0.0.1 user=postgres dbname=test";
    let (db, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "CREATE TABLE {table} (KEY VARCHAR NOT NULL, VALUE VARCHAR NOT NULL, VERSION VARCHAR NOT NULL, METADATA JSON);
         CREATE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
         BEGIN
             PERFORM pg_notify('{table}', json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', row_to_json(NEW))::text);
             RETURN NULL;
         END; $$ LANGUAGE plpgsql;
         CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE ON {table}
             FOR EACH ROW EXECUTE PROCEDURE {table}_notify();"
    ))
    .await
    .unwrap();
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pgconfig\nspec:\n  \
         type: configuration.postgres\n  version: v1\n  metadata:\n  - name: connectionString\n    \
         value: \"{dsn}\"\n  - name: table\n    value: {table}\n"
    );
    let resources = trellis_resources::parse_str(Path::new("pg.yaml"), &yaml).unwrap();
    let app = SubscriberApp::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("config-sub-pg", dir.path(), Some(app.port()), move |c| {
        c.resources = resources
    })
    .await;
    // Without a channel: Dapr's subscribe error.
    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/pgconfig/subscribe?key=limit"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_SUBSCRIBE");
    let r = request(
        "GET",
        &url(
            &s,
            &format!(
                "/v1.0/configuration/pgconfig/subscribe?key=limit&metadata.pgNotifyChannel={table}"
            ),
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    db.execute(
        &format!("INSERT INTO {table} VALUES ('limit', '10', '1', '{{\"team\": \"ops\"}}')"),
        &[],
    )
    .await
    .unwrap();
    let got = app
        .wait_for("/configuration/pgconfig/limit", 1, PATIENCE)
        .await;
    assert_eq!(
        got[0].json(),
        json!({"id": id, "items": {"limit": {"value": "10", "version": "1", "metadata": {"team": "ops"}}}})
    );
    s.stop().await;
    db.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}
