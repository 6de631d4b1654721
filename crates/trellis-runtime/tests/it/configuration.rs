//! The configuration API against in-process sidecars: the HTTP and gRPC routes over the
//! embedded store (seeded as `trellis config set` writes it), a `configuration.redis`
//! component reading what another Redis client wrote, Dapr's errors, and the metadata API
//! listing the store.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tonic::Code;
use trellis_configuration::Metadata;
use trellis_configuration::sqlite::SqliteConfigurationStore;
use trellis_proto::runtime as pb;
use trellis_test_support::request;

use crate::grpc::{assert_status, client};
use crate::{grpc_sidecar, url};

/// Writes `items` into the embedded store's file in `dir`, as the CLI does.
async fn seed(dir: &Path, items: &[(&str, &str)]) -> Vec<u64> {
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.join("configuration.db").display().to_string(),
    )]);
    let store = SqliteConfigurationStore::open(&md).await.unwrap();
    let mut versions = Vec::new();
    for (k, v) in items {
        let meta = BTreeMap::from([("source".to_string(), "test".to_string())]);
        versions.push(store.set(k, v, &meta).await.unwrap());
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_over_http_in_daprs_shape_with_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let v = seed(dir.path(), &[("limit", "10"), ("mode", "fast")]).await;
    let s = grpc_sidecar("config-app", dir.path(), None, |_| {}).await;

    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/configstore?key=limit&key=missing"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"limit": {"value": "10", "version": v[0].to_string(), "metadata": {"source": "test"}}})
    );
    // No key: every item; the alpha route answers the same.
    let r = request(
        "GET",
        &url(&s, "/v1.0-alpha1/configuration/configstore?metadata.x=y"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["limit"]["value"], "10");
    assert_eq!(got["mode"]["value"], "fast");
    assert_eq!(got["mode"]["version"], v[1].to_string());

    let r = request("GET", &url(&s, "/v1.0/configuration/nope?key=a"), &[], "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_STORE_NOT_FOUND");
    assert_eq!(
        r.json()["message"],
        "failed finding configuration store with key nope"
    );

    // A row the store cannot read: the backend's failure, with Dapr's code and message.
    let db = rusqlite::Connection::open(dir.path().join("configuration.db")).unwrap();
    db.execute(
        "UPDATE configuration SET metadata = 'oops' WHERE key = 'mode'",
        [],
    )
    .unwrap();
    drop(db);
    let r = request(
        "GET",
        &url(&s, "/v1.0/configuration/configstore?key=mode&key=limit"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_GET");
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.starts_with("failed to get [mode limit] from Configuration store configstore: "),
        "{message}"
    );

    let meta = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let listed = meta["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "configstore" && c["type"] == "configuration.sqlite");
    assert!(listed, "{meta}");
    s.stop().await;
}

/// A configuration component scoped to another app: this app has no store at all.
fn scoped_out(dir: &Path) -> trellis_resources::Resources {
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: elsewhere\nspec:\n  \
         type: configuration.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    \
         value: \"{}\"\nscopes:\n- someone-else\n",
        dir.join("elsewhere.db").display()
    );
    trellis_resources::parse_str(Path::new("configuration.yaml"), &yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_over_grpc_follows_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let v = seed(dir.path(), &[("limit", "10"), ("mode", "fast")]).await;
    let s = grpc_sidecar("grpc-config", dir.path(), None, |_| {}).await;
    let mut c = client(&s).await;
    let req = |store: &str, keys: &[&str]| pb::GetConfigurationRequest {
        store_name: store.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        metadata: Default::default(),
    };
    let got = c
        .get_configuration(req("configstore", &["mode", "missing"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items.len(), 1, "{got:?}");
    let mode = &got.items["mode"];
    assert_eq!(
        (mode.value.as_str(), mode.version.clone()),
        ("fast", v[1].to_string())
    );
    assert_eq!(
        mode.metadata.get("source").map(String::as_str),
        Some("test")
    );
    let got = c
        .get_configuration_alpha1(req("configstore", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.items.len(), 2, "{got:?}");
    let err = c.get_configuration(req("nope", &["a"])).await.unwrap_err();
    assert_status(
        &err,
        Code::InvalidArgument,
        "ERR_CONFIGURATION_STORE_NOT_FOUND",
    );
    s.stop().await;

    let resources = scoped_out(dir.path());
    let none = grpc_sidecar("no-config", dir.path(), None, move |c| {
        c.resources = resources
    })
    .await;
    let r = request("GET", &url(&none, "/v1.0/configuration/elsewhere"), &[], "").await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["errorCode"],
        "ERR_CONFIGURATION_STORE_NOT_CONFIGURED"
    );
    assert_eq!(r.json()["message"], "configuration stores not configured");
    let err = client(&none)
        .await
        .get_configuration_alpha1(req("elsewhere", &[]))
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
    );
    none.stop().await;
}

/// A `configuration.redis` component reads Dapr's `value||version` keys as written by any
/// Redis client (daprd reads the same keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_component_reads_daprs_format() {
    let key = trellis_test_support::servers::unique("trellis-rt-config");
    let mut conn = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("42||7")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: redisconfig\n\
                spec:\n  type: configuration.redis\n  version: v1\n  metadata:\n  - name: \
                redisHost\n    value: 127.0.0.1:6379\n";
    let resources = trellis_resources::parse_str(Path::new("redis.yaml"), yaml).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("redis-config", dir.path(), None, move |c| {
        c.resources = resources
    })
    .await;
    let r = request(
        "GET",
        &url(
            &s,
            &format!("/v1.0/configuration/redisconfig?key={key}&key={key}-missing"),
        ),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({ key.as_str(): {"value": "42", "version": "7", "metadata": {}} })
    );
    // The configured store replaces the embedded one.
    let r = request("GET", &url(&s, "/v1.0/configuration/configstore"), &[], "").await;
    assert_eq!(r.json()["errorCode"], "ERR_CONFIGURATION_STORE_NOT_FOUND");
    s.stop().await;
}
