//! What the official-SDK tests share: the report the SDK test apps (JavaScript in
//! `tests/sdk/js`, Python in `tests/sdk/python`) append JSON lines to, one `step` per SDK
//! call with its `result` or `error`, and `done` (or `crashed`) before they exit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use trellis_test_support::{Sidecar, wait_until};

use crate::PATIENCE;

/// The JSON lines the apps of one test append to.
pub struct Report {
    pub path: PathBuf,
}

impl Report {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("report.jsonl"),
        }
    }

    /// Every complete line so far (a line still being written is left for later).
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("report line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    /// The events of `app` named `event`.
    pub fn of(&self, app: &str, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["app"] == app && e["event"] == event)
            .collect()
    }

    /// The `step` events of a client app by step name.
    pub fn steps(&self, app: &str) -> BTreeMap<String, Value> {
        self.of(app, "step")
            .into_iter()
            .map(|e| (e["step"].as_str().unwrap_or_default().to_string(), e))
            .collect()
    }

    /// Polls until `done` says yes about the events; false after `timeout`.
    pub async fn poll(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        wait_until(timeout, || async { done(&self.events()) }).await
    }

    /// Waits until `done` says yes; otherwise fails with `what`, the report and the output
    /// of every process.
    pub async fn wait(
        &self,
        what: &str,
        procs: &[&Sidecar],
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) {
        if !self.poll(timeout, done).await {
            panic!("{what}: not within {timeout:?}\n{}", self.context(procs));
        }
    }

    /// The report and the processes' output, for a failure message.
    pub fn context(&self, procs: &[&Sidecar]) -> String {
        let mut s = format!(
            "--- report ---\n{}",
            std::fs::read_to_string(&self.path).unwrap_or_default()
        );
        for p in procs {
            s.push_str(&format!("--- trellis pid {} ---\n{}", p.pid(), p.output()));
        }
        s
    }

    /// Waits for a client app to report `done` (or crash) and for its `trellis run` to end
    /// with the app; asserts exit code 0.
    pub async fn wait_client(&self, app: &str, client: &mut Sidecar, others: &[&Sidecar]) {
        let mut procs = vec![&*client];
        procs.extend_from_slice(others);
        self.wait(&format!("{app} finishing"), &procs, PATIENCE, |events| {
            events
                .iter()
                .any(|e| e["app"] == app && (e["event"] == "done" || e["event"] == "crashed"))
        })
        .await;
        let code = client.wait_exit(PATIENCE).await;
        if code != Some(0) {
            let mut procs = vec![&*client];
            procs.extend_from_slice(others);
            panic!("{app} exited with {code:?}\n{}", self.context(&procs));
        }
    }
}

/// One step's `result`; fails with the whole step (its `error`) when there is none.
#[track_caller]
pub fn result<'a>(steps: &'a BTreeMap<String, Value>, name: &str, context: &str) -> &'a Value {
    let step = steps
        .get(name)
        .unwrap_or_else(|| panic!("no step {name:?}\n{context}"));
    step.get("result")
        .unwrap_or_else(|| panic!("step {name:?} failed: {step}\n{context}"))
}

/// One step's `error` (`{status, body}`); fails when the step succeeded.
#[track_caller]
pub fn error<'a>(steps: &'a BTreeMap<String, Value>, name: &str, context: &str) -> &'a Value {
    let step = steps
        .get(name)
        .unwrap_or_else(|| panic!("no step {name:?}\n{context}"));
    step.get("error")
        .or_else(|| step["result"].get("error"))
        .unwrap_or_else(|| panic!("step {name:?} should have failed: {step}\n{context}"))
}
