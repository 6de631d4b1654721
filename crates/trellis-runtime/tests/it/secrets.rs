//! Secrets against in-process sidecars: the HTTP and gRPC routes over a file store and an
//! environment store, the access rules of `spec.secrets.scopes`, Dapr's errors, and
//! `secretKeyRef` in another component's metadata resolved at start-up without a value
//! ever showing in the metadata API or an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tonic::Code;
use trellis_proto::runtime as pb;
use trellis_runtime::{Environment, RunningSidecar};
use trellis_test_support::request;

use crate::grpc::{assert_status, client};
use crate::{grpc_sidecar, url};

const SECRET: &str = "s3cr3t-value-7f1e";

/// Resource YAML: a file store `files`, an env store `env` (prefix `SVC_`), and a state
/// store whose connection string comes from the file store.
fn resources(dir: &Path) -> trellis_resources::Resources {
    let secrets = dir.join("secrets.json");
    let db = dir.join("from-secret.db");
    std::fs::write(
        &secrets,
        json!({
            "db": {"password": SECRET, "path": db.display().to_string()},
            "hidden": "no"
        })
        .to_string(),
    )
    .unwrap();
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  \
         type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    \
         value: \"{}\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  \
         name: env\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata:\n  \
         - name: prefix\n    value: SVC_\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\n\
         metadata:\n  name: kv\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  \
         - name: connectionString\n    secretKeyRef:\n      name: \"db:path\"\n      \
         key: \"db:path\"\nauth:\n  secretStore: files\n",
        secrets.display()
    );
    trellis_resources::parse_str(Path::new("secrets.yaml"), &yaml).unwrap()
}

fn configuration() -> trellis_resources::Configuration {
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
                secrets:\n    scopes:\n    - storeName: files\n      defaultAccess: allow\n      \
                deniedSecrets: [hidden]\n";
    let mut parsed = trellis_resources::parse_str(Path::new("config.yaml"), yaml).unwrap();
    parsed.configurations.pop().unwrap()
}

async fn start(dir: &Path) -> RunningSidecar {
    let env: BTreeMap<String, String> = [("SVC_TOKEN", "t0k"), ("DAPR_API_TOKEN", "no")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (resources, configuration) = (resources(dir), configuration());
    grpc_sidecar("secrets-app", dir, None, move |c| {
        c.resources = resources;
        c.configuration = Some(configuration);
        c.environment = Environment(std::sync::Arc::new(env));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_http_with_scopes_and_dapr_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;

    let r = request("GET", &url(&s, "/v1.0/secrets/files/db:password"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"db:password": SECRET}));
    let r = request(
        "GET",
        &url(&s, "/v1.0/secrets/env/TOKEN?metadata.x=y"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.json(), json!({"TOKEN": "t0k"}));
    let r = request("GET", &url(&s, "/v1.0/secrets/env/bulk"), &[], "").await;
    assert_eq!(
        r.json(),
        json!({"TOKEN": {"TOKEN": "t0k"}}),
        "DAPR_* is never handed out"
    );

    // A key that looks like a path is only a name: not found, nothing read from disk, and
    // the sidecar goes on answering.
    for key in [
        "..%2Fsecrets.json",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2Fdb:password",
    ] {
        let r = request(
            "GET",
            &url(&s, &format!("/v1.0/secrets/files/{key}")),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, 500, "{key}: {}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_SECRET_GET", "{key}");
        assert!(
            !r.text().contains(SECRET) && !r.text().contains("root:"),
            "{}",
            r.text()
        );
    }

    // The scope denies `hidden`: 403 for it, left out of bulk.
    let r = request("GET", &url(&s, "/v1.0/secrets/files/hidden"), &[], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errorCode"], "ERR_PERMISSION_DENIED");
    let r = request("GET", &url(&s, "/v1.0/secrets/files/bulk"), &[], "").await;
    let bulk = r.json();
    assert_eq!(bulk["db:password"], json!({"db:password": SECRET}));
    assert!(bulk.get("hidden").is_none(), "{bulk}");

    let r = request("GET", &url(&s, "/v1.0/secrets/nope/x"), &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["errorCode"], "ERR_SECRET_STORE_NOT_FOUND");
    let r = request(
        "GET",
        &url(&s, "/v1.0/secrets/files/..%2F..%2Fetc%2Fpasswd"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "a name is never a path: {}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_SECRET_GET");
    assert!(r.text().contains("not found"), "{}", r.text());

    // The state store opened on the path the secret named; no value shows in metadata.
    let r = request(
        "POST",
        &url(&s, "/v1.0/state/kv"),
        &[],
        r#"[{"key":"k","value":1}]"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(dir.path().join("from-secret.db").exists());
    let meta = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .text();
    assert!(meta.contains("secretstores.local.file"), "{meta}");
    assert!(
        !meta.contains(SECRET) && !meta.contains("from-secret.db"),
        "{meta}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_over_grpc_follow_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let mut c = client(&s).await;
    let got = c
        .get_secret(pb::GetSecretRequest {
            store_name: "files".into(),
            key: "db:password".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got.data.get("db:password").map(String::as_str),
        Some(SECRET)
    );
    let bulk = c
        .get_bulk_secret(pb::GetBulkSecretRequest {
            store_name: "files".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(bulk.data.contains_key("db:path") && !bulk.data.contains_key("hidden"));
    let err = c
        .get_secret(pb::GetSecretRequest {
            store_name: "files".into(),
            key: "hidden".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::PermissionDenied, "ERR_PERMISSION_DENIED");
    let err = c
        .get_secret(pb::GetSecretRequest {
            store_name: "nope".into(),
            key: "x".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "ERR_SECRET_STORE_NOT_FOUND");
    s.stop().await;

    // Every secret store is scoped to other apps: this one has none (and no embedded
    // default either, which stands in only when no secret store exists at all).
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: env\nspec:\n  \
                type: secretstores.local.env\n  version: v1\nscopes: [someone-else]\n";
    let scoped_out = trellis_resources::parse_str(Path::new("scoped.yaml"), yaml).unwrap();
    let none = grpc_sidecar("no-secrets", dir.path(), None, move |c| {
        c.resources = scoped_out
    })
    .await;
    let r = request("GET", &url(&none, "/v1.0/secrets/files/x"), &[], "").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["errorCode"], "ERR_SECRET_STORES_NOT_CONFIGURED");
    let err = client(&none)
        .await
        .get_secret(pb::GetSecretRequest::default())
        .await
        .unwrap_err();
    assert_status(
        &err,
        Code::FailedPrecondition,
        "ERR_SECRET_STORES_NOT_CONFIGURED",
    );
    none.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_secret_refs_stop_the_sidecar_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("secrets.json");
    std::fs::write(&store, json!({"pw": SECRET}).to_string()).unwrap();
    for (auth, name, key, needle) in [
        ("", "pw", "pw", "needs auth.secretStore"),
        (
            "auth:\n  secretStore: vault\n",
            "pw",
            "pw",
            "\"vault\" is not a secret store",
        ),
        (
            "auth:\n  secretStore: files\n",
            "nope",
            "nope",
            "secret nope not found",
        ),
        (
            "auth:\n  secretStore: files\n",
            "pw",
            "other",
            "has no key \"other\"",
        ),
    ] {
        let yaml = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  \
             type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    \
             value: \"{}\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  \
             name: kv\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  \
             - name: connectionString\n    secretKeyRef:\n      name: {name}\n      key: {key}\n{auth}",
            store.display()
        );
        let resources = trellis_resources::parse_str(Path::new("r.yaml"), &yaml).unwrap();
        let mut config = trellis_runtime::SidecarConfig::new("refs", dir.path());
        config.resources = resources;
        let err = crate::start_error(config).await;
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(err.contains("connectionString"), "{err}");
        assert!(!err.contains(SECRET), "a value leaked: {err}");
    }
}

/// With no secret store component, the embedded encrypted store `secretstore` answers what
/// was set in it (here through the store's own API, as `trellis secret set` does), over
/// HTTP and gRPC, with Dapr's answers for what it does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_is_there_with_no_components() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("embedded-secrets", dir.path(), None, |_| {}).await;
    let data_dir = dir.path().to_path_buf();
    let key_file = data_dir.join("secrets.key");
    let r = request(
        "GET",
        &url(&s, "/v1.0/secrets/secretstore/api-key"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_SECRET_GET");
    assert!(!key_file.exists(), "reading made no key");

    let md = trellis_secrets::Metadata::from_pairs([(
        "connectionString",
        data_dir.join("secrets.db").display().to_string(),
    )]);
    let cli = trellis_secrets::sqlite::SqliteSecretStore::open(&md)
        .await
        .unwrap();
    cli.set("api-key", "api-key", SECRET).await.unwrap();
    cli.set("db", "user", "app").await.unwrap();
    cli.set("db", "password", SECRET).await.unwrap();

    let r = request(
        "GET",
        &url(&s, "/v1.0/secrets/secretstore/api-key"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"api-key": SECRET}));
    let r = request("GET", &url(&s, "/v1.0/secrets/secretstore/bulk"), &[], "").await;
    assert_eq!(
        r.json(),
        json!({"api-key": {"api-key": SECRET}, "db": {"password": SECRET, "user": "app"}})
    );
    let got = client(&s)
        .await
        .get_secret(pb::GetSecretRequest {
            store_name: "secretstore".into(),
            key: "db".into(),
            metadata: Default::default(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data.get("user").map(String::as_str), Some("app"));
    let meta = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .text();
    assert!(meta.contains("secretstores.sqlite"), "{meta}");
    assert!(
        !meta.contains(SECRET),
        "a value leaked into the metadata: {meta}"
    );
    s.stop().await;
}
