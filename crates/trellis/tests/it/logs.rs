//! `trellis run`'s logs: quiet by default, `--log-level` reaching the building-block crates,
//! `--log-as-json`, and `--enable-api-logging`'s one line per API call.

use trellis_test_support::{Sidecar, request};

use crate::sidecar;

/// The JSON log lines a process printed (`--log-as-json`), the app's own lines left out.
fn json_lines(s: &Sidecar) -> Vec<serde_json::Value> {
    s.stderr()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Makes the sidecar open the embedded state store and use it.
async fn touch_state(s: &Sidecar) {
    let r = request("GET", &s.url("/v1.0/state/statestore/k"), &[], "").await;
    assert_eq!(r.status, 204, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_by_default() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = sidecar("quiet", data.path()).arg("--log-as-json").spawn();
    s.wait_healthy().await;
    touch_state(&s).await;
    let lines = json_lines(&s);
    assert!(!lines.is_empty(), "the startup lines:\n{}", s.output());
    for line in &lines {
        assert_ne!(line["level"], "DEBUG", "{line}");
        assert_ne!(line["fields"]["message"], "api call", "{line}");
        let target = line["target"].as_str().unwrap_or_default();
        assert!(
            target.starts_with("trellis"),
            "only Trellis's own lines: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_level_reaches_the_building_block_crates() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = sidecar("chatty", data.path())
        .arg("--log-level")
        .arg("debug")
        .arg("--log-as-json")
        .spawn();
    s.wait_healthy().await;
    touch_state(&s).await;
    let found = |target: &str, message: &str| {
        json_lines(&s).iter().any(|l| {
            l["level"] == "DEBUG"
                && l["target"].as_str().is_some_and(|t| t.starts_with(target))
                && l["fields"]["message"] == message
        })
    };
    let seen = trellis_test_support::wait_until(crate::PATIENCE, || async {
        found("trellis_state", "sqlite state store: opened")
    })
    .await;
    assert!(seen, "no debug line of trellis_state:\n{}", s.stderr());
    assert!(
        found("trellis_nameres", "registered in the local registry"),
        "{}",
        s.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_logging_writes_one_line_per_call() {
    let data = tempfile::tempdir().expect("tempdir");
    let s = sidecar("logged", data.path())
        .arg("--enable-api-logging")
        .arg("--log-as-json")
        .spawn();
    s.wait_healthy().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = request(
        "GET",
        &s.url("/v1.0/state/statestore/order-17"),
        &[("traceparent", &tp)],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = request("GET", &s.url("/v1.0/state/nostore/x"), &[], "").await;
    assert_eq!(r.status, 400);
    let calls = || -> Vec<serde_json::Value> {
        json_lines(&s)
            .into_iter()
            .filter(|l| l["fields"]["message"] == "api call")
            .filter(|l| l["fields"]["route"] == "/v1.0/state/{store}/{key}")
            .collect()
    };
    let two =
        trellis_test_support::wait_until(crate::PATIENCE, || async { calls().len() == 2 }).await;
    assert!(two, "two api call lines:\n{}", s.stderr());
    let lines = calls();
    let first = &lines[0]["fields"];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 204);
    assert_eq!(first["caller_app_id"], "logged");
    assert_eq!(first["trace_id"], trace);
    assert!(first["duration_us"].as_u64().is_some(), "{first}");
    assert_eq!(lines[1]["fields"]["status"], 400);
    assert_eq!(lines[1]["fields"]["trace_id"], "");
    assert!(
        !s.stderr().contains("order-17"),
        "the route template, never the raw path:\n{}",
        s.stderr()
    );
}
