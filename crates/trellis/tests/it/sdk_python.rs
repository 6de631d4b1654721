//! The official Dapr Python SDK (`dapr` on PyPI, version pinned in
//! `tests/sdk/python/requirements.txt`) against real `trellis run` processes, unchanged:
//! `DaprClient` talks to the sidecar's gRPC API as any Dapr app would, and each test checks
//! what the app observed (see `sdk.rs` for the report).
//!
//! Needs `python3` with `venv`. The first test to run creates `target/sdk-python-venv` and
//! installs the SDK into it from PyPI (under a file lock, so parallel test processes
//! install once).

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{Value, json};
use trellis_test_support::{SidecarBuilder, SubscriberApp, TestApp, request};

use crate::sdk::{Report, error, result};
use crate::{PATIENCE, sidecar};

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/python")
}

fn venv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-python-venv")
}

/// Makes sure the venv with the SDK exists; once per test process. Panics with what to
/// install when Python is missing: these tests must not pass by skipping.
pub(crate) fn ensure_sdk() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY.get_or_init(install_sdk).clone()
}

fn install_sdk() -> PathBuf {
    let venv = venv_dir();
    std::fs::create_dir_all(venv.parent().expect("target dir")).expect("create target dir");
    // One installer at a time; the kernel releases the lock if the process dies.
    let lock_path = venv.with_extension("lock");
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock.lock().expect("lock the venv");
    let python = venv.join("bin/python");
    let stamp_path = venv.join(".trellis-install-stamp");
    let want = install_stamp();
    if python.exists() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&want) {
        return python;
    }
    let started = Instant::now();
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); the Python SDK tests need python3 with venv (apt-get install python3 python3-venv)"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = std::fs::remove_dir_all(&venv);
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(python_dir().join("requirements.txt")),
        "pip install -r tests/sdk/python/requirements.txt",
    );
    std::fs::write(&stamp_path, want).expect("write the install stamp");
    eprintln!(
        "installing the Dapr Python SDK took {:?}",
        started.elapsed()
    );
    python
}

fn install_stamp() -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    std::fs::read(python_dir().join("requirements.txt"))
        .expect("read requirements.txt")
        .hash(&mut hasher);
    format!("{:016x}\n", hasher.finish())
}

/// `trellis run --app-id <app_id> -- python tests/sdk/python/<script>`, reporting to
/// `report`.
pub(crate) fn python_app(
    app_id: &str,
    data_dir: &Path,
    report: &Report,
    script: &str,
) -> SidecarBuilder {
    let python = ensure_sdk();
    let script = python_dir().join(script);
    sidecar(app_id, data_dir)
        .env("SDK_REPORT", &report.path.display().to_string())
        .cwd(&python_dir())
        .command(&[&python.display().to_string(), &script.display().to_string()])
}

/// The gRPC code and Dapr reason of a failed step.
fn grpc_error(steps: &BTreeMap<String, Value>, name: &str, ctx: &str) -> (String, String) {
    let e = error(steps, name, ctx);
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// `get_secret` and `get_bulk_secret` over gRPC against a `secretstores.local.file` store,
/// with a secrets scope that denies one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_reads_secrets_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    std::fs::write(
        dir.path().join("secrets.json"),
        json!({"db": {"password": "pw-1"}, "api": "key-2", "hidden": "no"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        resources.join("files.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: files\nspec:\n  \
             type: secretstores.local.file\n  version: v1\n  metadata:\n  - name: secretsFile\n    \
             value: \"{}\"\n",
            dir.path().join("secrets.json").display()
        ),
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
         secrets:\n    scopes:\n    - storeName: files\n      deniedSecrets: [hidden]\n",
    )
    .unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-secrets", dir.path(), &report, "client.py")
        .env("SCENARIO", "secrets")
        .arg("--resources-path")
        .arg(resources.display().to_string())
        .arg("--config")
        .arg(config.display().to_string())
        .spawn();
    report.wait_client("py-secrets", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-secrets");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    assert_eq!(r("get"), json!({"db:password": "pw-1"}), "{ctx}");
    assert_eq!(r("get-with-metadata"), json!({"api": "key-2"}), "{ctx}");
    assert_eq!(
        r("bulk"),
        json!({"api": {"api": "key-2"}, "db:password": {"db:password": "pw-1"}}),
        "{ctx}"
    );
    // The SDK raises the secrets RPCs' errors as plain gRPC errors (no ErrorInfo reason).
    for (step, code, text) in [
        (
            "denied",
            "PERMISSION_DENIED",
            "access denied by policy to get \"hidden\"",
        ),
        ("missing", "INTERNAL", "secret nothing-here not found"),
        (
            "unknown-store",
            "INVALID_ARGUMENT",
            "failed finding secret store with key nope",
        ),
    ] {
        let e = error(&steps, step, &ctx);
        assert_eq!(e["code"], code, "{step}: {ctx}");
        let details = e["details"].as_str().unwrap_or_default();
        assert!(details.contains(text), "{step}: {details}");
    }
}

/// `try_lock` and `unlock` over gRPC on the embedded lock store, `try_lock` as a context
/// manager, and the fencing token in the response headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_locks_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-lock", dir.path(), &report, "client.py")
        .env("SCENARIO", "lock")
        .spawn();
    report.wait_client("py-lock", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-lock");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    let acquired = r("acquire");
    assert_eq!(acquired["success"], true, "{ctx}");
    let token = acquired["token"].as_str().unwrap_or_default();
    assert!(token.parse::<u64>().is_ok_and(|t| t > 0), "{acquired}");
    assert_eq!(r("contended"), json!(false), "{ctx}");
    assert_eq!(r("unlock-other"), json!("lock_belongs_to_others"), "{ctx}");
    assert_eq!(r("unlock"), json!("success"), "{ctx}");
    assert_eq!(r("unlock-again"), json!("lock_does_not_exist"), "{ctx}");
    assert_eq!(
        r("context-manager"),
        json!({"held": true, "other-inside": false, "other-after": true}),
        "{ctx}"
    );
    let e = error(&steps, "unknown-store", &ctx);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{ctx}");
    let details = e["details"].as_str().unwrap_or_default();
    assert!(details.contains("lock store nope not found"), "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_state_and_metadata_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-state", dir.path(), &report, "client.py")
        .env("SCENARIO", "state")
        .spawn();
    report.wait_client("py-state", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-state");
    let r = |name: &str| result(&steps, name, &ctx).clone();

    assert_eq!(r("get"), json!(r#"{"name": "apple", "price": 3}"#), "{ctx}");
    assert_eq!(r("get-missing"), json!(""), "{ctx}");
    assert_eq!(r("get-after-stale"), json!(r#"{"v":2}"#), "{ctx}");
    let (code, reason) = grpc_error(&steps, "save-stale-etag", &ctx);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("ABORTED", "ERR_STATE_SAVE"),
        "{ctx}"
    );
    r("first-write-new-key");
    let (code, _) = grpc_error(&steps, "first-write-existing-key", &ctx);
    assert_eq!(code, "ABORTED", "{ctx}");
    assert_eq!(
        r("get-bulk"),
        json!([
            {"key": "k1", "data": r#"{"city": "Lyon", "n": 1}"#, "has_etag": true, "error": ""},
            {"key": "k2", "data": r#"{"city": "Oslo", "n": 2}"#, "has_etag": true, "error": ""},
            {"key": "none", "data": "", "has_etag": false, "error": ""},
        ]),
        "{ctx}"
    );
    assert_eq!(r("query"), json!(["k1", "k3"]), "{ctx}");
    assert_eq!(r("after-transaction"), json!(["", "four"]), "{ctx}");
    let (code, reason) = grpc_error(&steps, "delete-stale-etag", &ctx);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("ABORTED", "ERR_STATE_DELETE"),
        "{ctx}"
    );
    assert_eq!(r("get-deleted"), json!(""), "{ctx}");
    let (code, reason) = grpc_error(&steps, "unknown-store", &ctx);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("INVALID_ARGUMENT", "DAPR_STATE_NOT_FOUND"),
        "{ctx}"
    );
    let md = r("metadata");
    assert_eq!(md["id"], "py-state", "{ctx}");
    assert_eq!(md["extended"]["sdk"], "python", "{ctx}");
    let components = md["components"].as_array().cloned().unwrap_or_default();
    assert!(components.contains(&json!("statestore")), "{ctx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_publishes_over_grpc_to_a_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let subs = json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]);
    let subscriber_app = SubscriberApp::start(Some(subs)).await;
    let subscriber = sidecar("py-orders", dir.path())
        .app_port(subscriber_app.port())
        .spawn();
    subscriber.wait_healthy().await;
    let mut app = python_app("py-publisher", dir.path(), &report, "client.py")
        .env("SCENARIO", "publish")
        .spawn();
    report
        .wait_client("py-publisher", &mut app, &[&subscriber])
        .await;
    let ctx = report.context(&[&app, &subscriber]);
    let steps = report.steps("py-publisher");
    assert_eq!(result(&steps, "publish-bulk", &ctx), &json!([]), "{ctx}");
    let (code, reason) = grpc_error(&steps, "publish-unknown-pubsub", &ctx);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("INVALID_ARGUMENT", "DAPR_PUBSUB_NOT_FOUND"),
        "{ctx}"
    );

    let got = subscriber_app.wait_for("/orders", 5, PATIENCE).await;
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    let mut ids: Vec<i64> = events
        .iter()
        .filter_map(|e| e["data"]["orderId"].as_i64())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4], "{events:?}\n{ctx}");
    let text = events
        .iter()
        .find(|e| e["datacontenttype"] == "text/plain")
        .unwrap_or_else(|| panic!("no text event: {events:?}"));
    assert_eq!(text["data"], "hello");
    assert!(
        events.iter().all(|e| e["source"] == "py-publisher"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_streaming_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-stream", dir.path(), &report, "client.py")
        .env("SCENARIO", "stream")
        .spawn();
    report.wait_client("py-stream", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-stream");
    let r = |name: &str| result(&steps, name, &ctx).clone();

    assert_eq!(
        r("listed-while-open"),
        json!(["pubsub/stream-orders"]),
        "{ctx}"
    );
    assert_eq!(
        r("event"),
        json!({
            "has_id": true, "source": "py-stream", "type": "com.dapr.event.sent",
            "topic": "stream-orders", "pubsub": "pubsub",
            "content_type": "application/json", "data": {"orderId": 1},
        }),
        "{ctx}"
    );
    assert_eq!(
        r("retried-same"),
        json!({"same_id": true, "data": {"orderId": 2}}),
        "{ctx}"
    );
    assert_eq!(
        r("after-drop-data"),
        json!({"orderId": 4}),
        "the dropped one stayed gone\n{ctx}"
    );
    assert_eq!(r("listed-after-close"), json!([]), "{ctx}");
    assert_eq!(r("handled"), json!({"n": 5}), "{ctx}");
    let unknown = error(&steps, "subscribe-unknown-pubsub", &ctx);
    let message = unknown["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("INVALID_ARGUMENT") && message.contains("pubsub nope is not found"),
        "{ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_invokes_an_http_app_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let echo = TestApp::start("py-callee").await;
    let callee = sidecar("py-callee", dir.path())
        .app_port(echo.port())
        .spawn();
    callee.wait_healthy().await;
    let mut app = python_app("py-caller", dir.path(), &report, "client.py")
        .env("SCENARIO", "invoke")
        .env("TARGET_APP", "py-callee")
        .env("DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")
        .spawn();
    report.wait_client("py-caller", &mut app, &[&callee]).await;
    let ctx = report.context(&[&app, &callee]);
    let steps = report.steps("py-caller");
    let post = result(&steps, "invoke-post", &ctx);
    assert_eq!(post["content_type"], "application/json", "{ctx}");
    assert_eq!(post["body"]["method"], "POST", "{ctx}");
    assert_eq!(post["body"]["path"], "/orders/7", "{ctx}");
    assert_eq!(post["body"]["query"], "a=1", "{ctx}");
    assert_eq!(post["body"]["body"], r#"{"n":7}"#, "{ctx}");
    assert_eq!(
        post["body"]["headers"]["dapr-caller-app-id"], "py-caller",
        "{ctx}"
    );
    assert_eq!(post["body"]["headers"]["content-length"], "7", "{ctx}");
    assert_eq!(result(&steps, "invoke-get", &ctx)["method"], "GET", "{ctx}");
    let (code, _) = grpc_error(&steps, "invoke-404", &ctx);
    assert_eq!(code, "NOT_FOUND", "{ctx}");
    // invoke_method raises the plain grpc error (no Dapr details parsed), so the message
    // is what there is to check.
    let unknown = error(&steps, "invoke-unknown-app", &ctx);
    assert_eq!(unknown["code"], "INTERNAL", "{ctx}");
    assert!(
        unknown["details"]
            .as_str()
            .is_some_and(|d| d.starts_with("failed to invoke, id: nobody-here")),
        "{ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_app_receives_invocations_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let app = python_app("py-grpc-app", dir.path(), &report, "grpc_app.py")
        .arg("--app-protocol")
        .arg("grpc")
        .app_port(trellis_test_support::free_port())
        .spawn();
    app.wait_healthy().await;
    let caller = sidecar("py-grpc-caller", dir.path()).spawn();
    caller.wait_healthy().await;
    let ctx = || report.context(&[&app, &caller]);

    // HTTP caller -> OnInvoke of the gRPC app.
    let r = request(
        "POST",
        &caller.url("/v1.0/invoke/py-grpc-app/method/echo"),
        &[("content-type", "text/plain")],
        "hello",
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), ctx());
    assert_eq!(
        r.json(),
        json!({"echoed": "hello", "by": "py-grpc-app"}),
        "{}",
        ctx()
    );
    // gRPC caller (InvokeService) -> OnInvoke.
    let mut client = trellis_proto::runtime::dapr_client::DaprClient::connect(format!(
        "http://127.0.0.1:{}",
        caller.grpc_port
    ))
    .await
    .unwrap();
    let resp = client
        .invoke_service(trellis_proto::runtime::InvokeServiceRequest {
            id: "py-grpc-app".into(),
            message: Some(trellis_proto::common::InvokeRequest {
                method: "echo".into(),
                data: Some(prost_types::Any {
                    type_url: String::new(),
                    value: b"over grpc".to_vec(),
                }),
                content_type: "text/plain".into(),
                http_extension: None,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let echoed: Value = serde_json::from_slice(&resp.data.unwrap().value).unwrap();
    assert_eq!(echoed["echoed"], "over grpc", "{}", ctx());
    // A method the app does not have: its UNIMPLEMENTED comes back as it was.
    let err = client
        .invoke_service(trellis_proto::runtime::InvokeServiceRequest {
            id: "py-grpc-app".into(),
            message: Some(trellis_proto::common::InvokeRequest {
                method: "nope".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    let invoked = report.of("py-grpc-app", "invoked");
    assert_eq!(invoked.len(), 2, "{}", ctx());
    assert_eq!(invoked[0]["caller"], "py-grpc-caller", "{}", ctx());

    // Its subscriptions come from ListTopicSubscriptions; events arrive through OnTopicEvent.
    let published = |topic: &str, body: &str| {
        let url = caller.url(&format!("/v1.0/publish/pubsub/{topic}"));
        let body = body.to_string();
        async move {
            let r = request("POST", &url, &[("content-type", "application/json")], body).await;
            assert_eq!(r.status, 204, "{}", r.text());
        }
    };
    published("orders", r#"{"orderId": 1}"#).await;
    published("orders", r#"{"orderId": 2}"#).await;
    published("flaky", r#"{"n": 1}"#).await;
    report
        .wait("events delivered", &[&app, &caller], PATIENCE, |events| {
            let orders = events
                .iter()
                .filter(|e| e["event"] == "received" && e["topic"] == "orders")
                .count();
            let flaky = events
                .iter()
                .filter(|e| e["event"] == "received" && e["topic"] == "flaky")
                .count();
            orders >= 2 && flaky >= 2
        })
        .await;
    let received = report.of("py-grpc-app", "received");
    let mut ids: Vec<i64> = received
        .iter()
        .filter(|e| e["topic"] == "orders")
        .filter_map(|e| e["data"]["orderId"].as_i64())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2], "{}", ctx());
    let order = received.iter().find(|e| e["topic"] == "orders").unwrap();
    assert_eq!(order["source"], "py-grpc-caller", "{}", ctx());
    assert_eq!(order["type"], "com.dapr.event.sent", "{}", ctx());
    // RETRY redelivers the same event, which SUCCESS then settles.
    let flaky: Vec<&Value> = received.iter().filter(|e| e["topic"] == "flaky").collect();
    assert_eq!(flaky[0]["first"], true, "{}", ctx());
    assert_eq!(flaky[1]["first"], false, "{}", ctx());
    assert_eq!(flaky[0]["id"], flaky[1]["id"], "{}", ctx());
    // The metadata API lists the subscriptions the app declared over gRPC.
    let md = request("GET", &app.url("/v1.0/metadata"), &[], "")
        .await
        .json();
    let topics: Vec<&str> = md["subscriptions"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["topic"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        topics.contains(&"orders") && topics.contains(&"flaky"),
        "{md}"
    );
    assert_eq!(md["appConnectionProperties"]["protocol"], "grpc", "{md}");

    // A configuration subscription made over HTTP reaches the gRPC app as an invocation of
    // `configuration/<store>/<key>`, as daprd sends it.
    let r = request(
        "GET",
        &app.url("/v1.0/configuration/configstore/subscribe?key=limit"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].clone();
    let (code, p) =
        crate::run_to_end(crate::trellis(&["config", "set", "limit", "5"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    report
        .wait("configuration update", &[&app], PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "config")
        })
        .await;
    let update = &report.of("py-grpc-app", "config")[0];
    assert_eq!(
        update["data"],
        json!({"id": id, "items": {"limit": {"value": "5", "version": "1"}}}),
        "{}",
        ctx()
    );
    assert_eq!(update["content_type"], "application/json", "{}", ctx());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_with_dapr_app_id_are_proxied_to_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let server = python_app("py-echo", dir.path(), &report, "proxy_server.py")
        .arg("--app-protocol")
        .arg("grpc")
        .app_port(trellis_test_support::free_port())
        .env("APP_API_TOKEN", "app-secret")
        .spawn();
    server.wait_healthy().await;
    let mut client = python_app("py-proxy-client", dir.path(), &report, "proxy_client.py")
        .env("TARGET_APP", "py-echo")
        .spawn();
    report
        .wait_client("py-proxy-client", &mut client, &[&server])
        .await;
    // The app saw the slow call end when the caller's deadline passed.
    report
        .wait(
            "the slow call to end",
            &[&server, &client],
            PATIENCE,
            |events| events.iter().any(|e| e["event"] == "slow-ended"),
        )
        .await;
    let ctx = report.context(&[&client, &server]);
    let steps = report.steps("py-proxy-client");

    let unary = result(&steps, "unary", &ctx);
    assert_eq!(unary["data"], "echo:hello", "{ctx}");
    assert_eq!(
        unary["trailers"]["x-served-by"], "py-echo",
        "trailers pass back\n{ctx}"
    );
    let seen = &report.of("py-echo", "unary")[0];
    assert_eq!(seen["caller"], "py-proxy-client", "{ctx}");
    assert_eq!(
        seen["has_token"], true,
        "APP_API_TOKEN reaches the app\n{ctx}"
    );
    assert_eq!(
        result(&steps, "chat", &ctx),
        &json!(["re:a", "re:b", "re:c"]),
        "{ctx}"
    );
    assert_eq!(report.of("py-echo", "chat").len(), 3, "{ctx}");
    let (code, _) = grpc_error(&steps, "deadline", &ctx);
    assert_eq!(code, "DEADLINE_EXCEEDED", "{ctx}");
    let started = &report.of("py-echo", "slow-started")[0];
    assert_eq!(
        started["deadline_seen"], true,
        "grpc-timeout reaches the app\n{ctx}"
    );
    let ended = &report.of("py-echo", "slow-ended")[0];
    assert_eq!(
        ended["active"], false,
        "the app's call was cancelled\n{ctx}"
    );
    let app_error = error(&steps, "app-error", &ctx);
    assert_eq!(app_error["code"], "FAILED_PRECONDITION", "{ctx}");
    assert_eq!(app_error["details"], "not now", "{ctx}");
    let (code, _) = grpc_error(&steps, "unknown-method", &ctx);
    assert_eq!(code, "UNIMPLEMENTED", "{ctx}");
    let (code, _) = grpc_error(&steps, "unknown-app", &ctx);
    assert_eq!(code, "INTERNAL", "{ctx}");
    let (code, _) = grpc_error(&steps, "bad-app-id", &ctx);
    assert_eq!(code, "INVALID_ARGUMENT", "{ctx}");
}

/// `examples/python-sdk`, run as the README says (`trellis run -f`), with the SDK from the
/// tests' venv instead of the example's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_example_works() {
    let python = ensure_sdk();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-sdk");
    let work = tempfile::tempdir().unwrap();
    for file in [
        "python.sh",
        "requirements.txt",
        "inventory/app.py",
        "shop/app.py",
    ] {
        let to = work.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(example.join(file), to).unwrap();
    }
    // Same file, but on a port of this test's own so parallel runs cannot collide.
    let port = trellis_test_support::free_port();
    let run_file = std::fs::read_to_string(example.join("trellis.yaml"))
        .unwrap()
        .replace("appPort: 6101", &format!("appPort: {port}"));
    std::fs::write(work.path().join("trellis.yaml"), run_file).unwrap();
    let data = tempfile::tempdir().unwrap();
    let run = crate::trellis(
        &["run", "-f", &work.path().display().to_string()],
        data.path(),
    )
    .env("TRELLIS_EXAMPLE_PYTHON", &python.display().to_string())
    .spawn();
    run.wait_output(
        "order 1 received: [{'name': 'apple', 'count': 3}, {'name': 'pear', 'count': 1}]",
        PATIENCE,
    )
    .await;
    let out = run.output();
    for line in [
        "== APP - shop == cart saved and read back: [{'name': 'apple', 'count': 3}, {'name': 'pear', 'count': 1}]",
        "== APP - inventory == reserve 3 x apple: ok",
        "== APP - shop == reserved apple: {'reserved': True, 'left': 2}",
        "== APP - shop == reserved pear: {'reserved': True, 'left': 1}",
        "== APP - inventory == order 1 received: [{'name': 'apple', 'count': 3}, {'name': 'pear', 'count': 1}]",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    // Ctrl-C stops the gRPC app without a traceback.
    let mut run = run;
    run.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(run.wait_exit(PATIENCE).await, Some(0), "{}", run.output());
    let out = run.output();
    assert!(!out.contains("Traceback"), "{out}");
    assert!(
        out.contains("== APP - inventory == inventory stopped"),
        "{out}"
    );
}

/// `get_configuration` over gRPC on the embedded configuration store, seeded with `trellis
/// config set` as a user would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_reads_configuration_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["config", "set", "limit", "10"][..],
        &["config", "set", "mode", "fast", "-m", "team=ops"][..],
    ] {
        let (code, p) = crate::run_to_end(crate::trellis(args, dir.path())).await;
        assert_eq!(code, Some(0), "{}", p.output());
    }
    let report = Report::new(dir.path());
    let mut app = python_app("py-config", dir.path(), &report, "client.py")
        .env("SCENARIO", "config")
        .spawn();
    report.wait_client("py-config", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-config");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    let limit = json!({"value": "10", "version": "1", "metadata": {}});
    let mode = json!({"value": "fast", "version": "2", "metadata": {"team": "ops"}});
    assert_eq!(r("get"), json!({ "limit": limit }), "{ctx}");
    assert_eq!(r("all"), json!({ "limit": limit, "mode": mode }), "{ctx}");
    let e = error(&steps, "unknown-store", &ctx);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{ctx}");
    let details = e["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("failed finding configuration store with key nope"),
        "{details}"
    );
}

/// `subscribe_configuration` over gRPC on the embedded store: a `trellis config set` run by
/// the app (another process, as an operator's would be) reaches its handler, and
/// `unsubscribe_configuration` stops the changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_subscribes_to_configuration_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (code, p) = crate::run_to_end(crate::trellis(
        &["config", "set", "limit", "10"],
        dir.path(),
    ))
    .await;
    assert_eq!(code, Some(0), "{}", p.output());
    let report = Report::new(dir.path());
    let mut app = python_app("py-config-sub", dir.path(), &report, "client.py")
        .env("SCENARIO", "config-subscribe")
        .env("TRELLIS_BIN", crate::trellis_bin())
        .env("CONFIG_DATA_DIR", &dir.path().display().to_string())
        .spawn();
    report.wait_client("py-config-sub", &mut app, &[]).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-config-sub");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    let id = r("subscribe");
    assert!(id.as_str().is_some_and(|s| !s.is_empty()), "{ctx}");
    // `mode` was set first, but only `limit` is subscribed; versions count per change.
    assert_eq!(
        r("change"),
        json!({"id": id, "items": {"limit": {"value": "11", "version": "3", "metadata": {}}}}),
        "{ctx}"
    );
    assert_eq!(r("unsubscribe"), json!(true), "{ctx}");
    assert_eq!(r("unsubscribe-again"), json!(false), "{ctx}");
    assert_eq!(r("after-unsubscribe"), json!(0), "{ctx}");
    // The SDK gives up on a stream that fails at once: no id.
    assert_eq!(r("unknown-store"), Value::Null, "{ctx}");
}

/// Jobs with the Python SDK: a gRPC app (`dapr.ext.grpc`'s `App`) schedules, reads,
/// overwrites and deletes its own jobs with `DaprClient`, and its `@app.job_event` handler
/// gets the one that falls due, with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_schedules_jobs_and_handles_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let app = python_app("py-jobs", dir.path(), &report, "jobs_app.py")
        .arg("--app-protocol")
        .arg("grpc")
        .app_port(trellis_test_support::free_port())
        .spawn();
    app.wait_healthy().await;
    report
        .wait("the job event", &[&app], PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "job")
        })
        .await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-jobs");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    assert_eq!(r("schedule-later"), json!("ok"), "{ctx}");
    assert_eq!(
        r("get-later"),
        json!({"name": "py-later", "schedule": "@every 1h", "repeats": 2, "due_time": "1h",
               "data": "later"}),
        "{ctx}"
    );
    let (code, reason) = grpc_error(&steps, "duplicate", &ctx);
    assert_eq!(
        (code.as_str(), reason.as_str()),
        ("ALREADY_EXISTS", "DAPR_SCHEDULER_SCHEDULE_JOB"),
        "{ctx}"
    );
    assert_eq!(r("overwrite"), json!("ok"), "{ctx}");
    assert_eq!(r("delete-later"), json!("ok"), "{ctx}");
    assert_eq!(r("schedule-once"), json!("ok"), "{ctx}");
    let jobs = report.of("py-jobs", "job");
    assert_eq!(jobs.len(), 1, "{ctx}");
    assert_eq!(jobs[0]["name"], "py-once");
    assert_eq!(jobs[0]["data"], "hello");
    app.signal(nix::sys::signal::Signal::SIGTERM);
}
