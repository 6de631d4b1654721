//! The embedded configuration store through real `trellis` processes: `trellis config set`
//! writes it, a running sidecar answers the items over Dapr's HTTP API (including a value
//! changed while it runs), and `trellis config get` reads them back.

use serde_json::json;
use trellis_test_support::request;

use crate::{run_to_end, sidecar, trellis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_is_what_a_running_sidecar_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (code, p) = run_to_end(trellis(&["config", "set", "limit", "10"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    assert!(
        p.stdout().contains("limit set (version 1)"),
        "{}",
        p.output()
    );

    let s = sidecar("config-cli", dir.path()).spawn();
    s.wait_healthy().await;
    let get = s.url("/v1.0/configuration/configstore?key=limit&key=mode");
    let r = request("GET", &get, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"limit": {"value": "10", "version": "1", "metadata": {}}})
    );

    // Set while the sidecar runs, with metadata given by the --data-dir flag this time.
    let data_dir = dir.path().display().to_string();
    let (code, p) = run_to_end(trellis(
        &[
            "config",
            "set",
            "mode",
            "fast",
            "-m",
            "team=ops",
            "--data-dir",
            &data_dir,
        ],
        dir.path(),
    ))
    .await;
    assert_eq!(code, Some(0), "{}", p.output());
    let r = request("GET", &get, &[], "").await;
    assert_eq!(
        r.json()["mode"],
        json!({"value": "fast", "version": "2", "metadata": {"team": "ops"}})
    );

    let (code, p) = run_to_end(trellis(&["config", "get", "-o", "json"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    let all: serde_json::Value = serde_json::from_str(&p.stdout()).unwrap();
    assert_eq!(all, r.json());
    let (code, p) = run_to_end(trellis(&["config", "get", "limit"], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    assert!(
        p.stdout().contains("limit") && !p.stdout().contains("fast"),
        "{}",
        p.output()
    );
}
