//! The embedded secret store through real `trellis` processes: `trellis secret set` seals a
//! secret (from standard input or an argument), a running sidecar answers it over Dapr's
//! HTTP API as the store `secretstore`, a component's `secretKeyRef` reads it at start-up,
//! and `trellis secret get|list|rm` manage it; no value ever shows in a log.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use serde_json::json;
use trellis_test_support::request;

use crate::{run_to_end, sidecar, trellis, trellis_bin};

const VALUE: &str = "pa55-w0rd-9c2d";

/// `trellis secret set <name>` with the value on standard input.
fn set_from_stdin(dir: &Path, name: &str, value: &str) -> std::process::Output {
    let mut child = std::process::Command::new(trellis_bin())
        .args(["secret", "set", name])
        .env("TRELLIS_DATA_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{value}\n").as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_set_is_what_a_running_sidecar_answers() {
    let dir = tempfile::tempdir().unwrap();
    let out = set_from_stdin(dir.path(), "db-password", VALUE);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("secret db-password set"), "{stdout}");
    assert!(!stdout.contains(VALUE), "the value was echoed: {stdout}");
    let db = std::fs::read(dir.path().join("secrets.db")).unwrap_or_default();
    assert!(!db.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));

    // A component whose connection string comes from the embedded store.
    let components = dir.path().join("components");
    std::fs::create_dir_all(&components).unwrap();
    let kv_db = dir.path().join("kv.db").display().to_string();
    let (code, p) = run_to_end(trellis(&["secret", "set", "kv-path", &kv_db], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    std::fs::write(
        components.join("kv.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kv\nspec:\n  \
         type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    \
         secretKeyRef:\n      name: kv-path\nauth:\n  secretStore: secretstore\n",
    )
    .unwrap();

    let s = sidecar("secret-cli", dir.path())
        .arg("--resources-path")
        .arg(components.display().to_string())
        .arg("--log-level")
        .arg("debug")
        .spawn();
    s.wait_healthy().await;
    let r = request(
        "GET",
        &s.url("/v1.0/secrets/secretstore/db-password"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"db-password": VALUE}));
    let r = request(
        "POST",
        &s.url("/v1.0/state/kv"),
        &[("content-type", "application/json")],
        r#"[{"key": "k", "value": 1}]"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(
        Path::new(&kv_db).exists(),
        "the state store opened the file the secret named"
    );

    // Changed while the sidecar runs: the next read answers the new value.
    let (code, p) = run_to_end(trellis(
        &["secret", "set", "db-password", "rotated-1"],
        dir.path(),
    ))
    .await;
    assert_eq!(code, Some(0), "{}", p.output());
    let r = request("GET", &s.url("/v1.0/secrets/secretstore/bulk"), &[], "").await;
    assert_eq!(r.json()["db-password"], json!({"db-password": "rotated-1"}));

    let (code, p) = run_to_end(trellis(&["secret", "get", "db-password"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    assert_eq!(p.stdout().trim(), "rotated-1");
    let (code, p) = run_to_end(trellis(
        &["secret", "set", "svc", "-k", "token", "t-1"],
        dir.path(),
    ))
    .await;
    assert_eq!(code, Some(0), "{}", p.output());
    let (code, p) = run_to_end(trellis(&["secret", "list"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    let list = p.stdout();
    assert!(
        list.contains("db-password") && list.contains("svc  (keys: token)"),
        "{list}"
    );
    assert!(
        !list.contains("rotated-1") && !list.contains("t-1"),
        "{list}"
    );
    let (code, p) = run_to_end(trellis(&["secret", "rm", "db-password"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    let (code, p) = run_to_end(trellis(&["secret", "get", "db-password"], dir.path())).await;
    assert_eq!(code, Some(1), "{}", p.output());
    assert!(
        p.stderr().contains("no secret \"db-password\""),
        "{}",
        p.output()
    );
    let r = request(
        "GET",
        &s.url("/v1.0/secrets/secretstore/db-password"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_SECRET_GET");

    let logs = s.output();
    for value in [VALUE, "rotated-1", "t-1", kv_db.as_str()] {
        assert!(
            !logs.contains(value),
            "{value} in the sidecar's logs: {logs}"
        );
    }
}
