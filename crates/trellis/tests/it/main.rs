//! Integration tests of the `trellis` binary: real `trellis` processes, real apps, real
//! sockets on loopback.
//!
//! Every test makes its own temporary data directory (so its sidecars only find each other)
//! and takes free ports, so tests run in parallel and can be repeated.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod configuration;
mod discovery;
mod jobs;
mod launcher;
mod lock;
mod logs;
mod metrics;
mod mtls;
mod multiapp;
mod pubsub;
mod pubsub_crash;
mod resiliency;
mod sdk;
mod sdk_js;
mod sdk_python;
mod secrets;
mod state;
mod streaming;
mod tracing;
mod workflows;

use std::path::Path;
use std::time::Duration;

use trellis_test_support::{HttpResponse, Sidecar, SidecarBuilder};

/// The binary under test, built by cargo for this test run.
pub fn trellis_bin() -> &'static str {
    env!("CARGO_BIN_EXE_trellis")
}

/// How long a process may take to become healthy or to exit. Generous: debug builds on a
/// loaded two-core machine are slow to start, and a healthy run never waits this long.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// `trellis run --app-id <app_id>` sharing the registry under `data_dir`.
pub fn sidecar(app_id: &str, data_dir: &Path) -> SidecarBuilder {
    SidecarBuilder::new(trellis_bin(), app_id, data_dir)
}

/// `trellis <args>` exactly as given, with `data_dir` as its data directory.
pub fn trellis(args: &[&str], data_dir: &Path) -> SidecarBuilder {
    SidecarBuilder::raw(trellis_bin(), args, data_dir)
}

/// Runs `trellis <args>` to the end; returns its exit code and the process (for its output).
pub async fn run_to_end(builder: SidecarBuilder) -> (Option<i32>, Sidecar) {
    let mut process = builder.spawn();
    let code = process.wait_exit(PATIENCE).await;
    (code, process)
}

/// Asserts a Dapr error response: `status` and `{"errorCode": code, "message": ...}` with
/// every one of `needles` in the message.
#[track_caller]
pub fn assert_dapr_error(
    resp: &HttpResponse,
    status: u16,
    code: &str,
    needles: &[&str],
    context: &str,
) {
    assert_eq!(
        resp.status.as_u16(),
        status,
        "expected {status} {code}, got {} {:?}\n{context}",
        resp.status,
        resp.text()
    );
    let json: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {:?}\n{context}", resp.text()));
    assert_eq!(json["errorCode"], code, "body {json}\n{context}");
    let message = json["message"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(
            message.contains(needle),
            "message {message:?} should mention {needle:?}\n{context}"
        );
    }
}
