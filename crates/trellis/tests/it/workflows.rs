//! Dapr workflows with the official Python SDK (`dapr.ext.workflow`, in the `dapr` wheel
//! since 1.19) against real `trellis run` processes: the SDK's worker and client on the
//! sidecar's gRPC port, the HTTP workflow API beside them, and kill -9 of the sidecar and
//! its worker in the middle of a workflow. The app is `tests/sdk/python/workflows.py`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::sdk::{Report, error, result};
use crate::sdk_python::python_app;

/// Waits for the app's `done` (or `crash`) report, longer than the other SDK tests: a fan-out
/// of hundreds of activities in Python on a loaded machine takes a while.
async fn finish(report: &Report, app_id: &str, app: &mut trellis_test_support::Sidecar) {
    report
        .wait(
            &format!("{app_id} finishing"),
            &[app],
            Duration::from_secs(120),
            |events| {
                events.iter().any(|e| {
                    e["app"] == app_id && (e["event"] == "done" || e["event"] == "crashed")
                })
            },
        )
        .await;
    let code = app.wait_exit(crate::PATIENCE).await;
    assert_eq!(code, Some(0), "{}", report.context(&[app]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_workflow_patterns() {
    let dir = tempfile::tempdir().unwrap();
    patterns(dir.path(), "py-wf", None).await;
}

/// The same patterns with `workflowbackend.postgresql` (PostgreSQL on 127.0.0.1:5432,
/// database `test`, tables of this run's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_workflow_patterns_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let resources = backend(dir.path(), Backend::Postgres);
    patterns(dir.path(), "py-wf-pg", Some(resources)).await;
}

/// Runs the app's `patterns` scenario (with the components in `resources`, if any) and
/// checks each pattern's result.
async fn patterns(dir: &Path, app_id: &str, resources: Option<String>) {
    let report = Report::new(dir);
    let mut app = python_app(app_id, dir, &report, "workflows.py").env("SCENARIO", "patterns");
    if let Some(resources) = resources {
        app = app.arg("--resources-path").arg(resources);
    }
    let mut app = app.spawn();
    finish(&report, app_id, &mut app).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps(app_id);
    let r = |name: &str| result(&steps, name, &ctx).clone();
    let done = |output: &str| json!({"status": "COMPLETED", "output": output});
    assert_eq!(
        r("metadata-workers"),
        json!({"connectedWorkers": 1}),
        "{ctx}"
    );
    assert_eq!(r("chain"), done("15"), "10 + 5 increments\n{ctx}");
    let squares: i64 = (0..1000i64).map(|i| i * i).sum();
    assert_eq!(
        r("fan-out"),
        done(&squares.to_string()),
        "1,000 activities\n{ctx}"
    );
    assert_eq!(
        r("scheduled-start"),
        json!({"pending": "PENDING", "done": {"status": "COMPLETED", "output": "5"}, "not-early": true}),
        "{ctx}"
    );
    assert_eq!(r("event-wins"), done("\"approved by ana\""), "{ctx}");
    assert_eq!(r("timer-wins"), done("\"timed out\""), "{ctx}");
    assert_eq!(r("continue-as-new"), done("3"), "{ctx}");
    assert_eq!(r("child"), done("12"), "(1 + 5) * 2\n{ctx}");
    assert_eq!(r("child-state"), done("6"), "{ctx}");
    assert_eq!(
        r("retry"),
        done("7"),
        "two failures, then retried to success\n{ctx}"
    );
    let failed = r("failure");
    assert_eq!(failed["status"], "FAILED", "{ctx}");
    assert!(
        failed["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("boom: this activity always fails"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_workflow_control_and_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-wf-control", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "control")
        .spawn();
    finish(&report, "py-wf-control", &mut app).await;
    let ctx = report.context(&[&app]);
    let steps = report.steps("py-wf-control");
    let r = |name: &str| result(&steps, name, &ctx).clone();
    assert_eq!(
        r("terminate"),
        json!({"status": "TERMINATED", "output": "\"stopped\""}),
        "{ctx}"
    );
    assert_eq!(
        r("suspend-resume"),
        json!({
            "paused": "SUSPENDED",
            "after-event": "SUSPENDED",
            "done": {"status": "COMPLETED", "output": "\"approved by bo\""},
        }),
        "an event raised while suspended waits for the resume\n{ctx}"
    );
    assert_eq!(r("purge"), Value::Null, "a purged instance is gone\n{ctx}");
    let unknown = r("unknown-workflow");
    assert_eq!(unknown["status"], "FAILED", "{ctx}");
    assert!(
        unknown["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("no_such_workflow"),
        "{unknown}"
    );
    assert_eq!(r("missing-state"), Value::Null, "{ctx}");
    assert_eq!(
        error(&steps, "raise-to-missing", &ctx)["code"],
        "NOT_FOUND",
        "{ctx}"
    );

    assert_eq!(
        r("http-start"),
        json!({"status": 202, "body": {"instanceID": "http-1"}})
    );
    let done = r("http-done");
    assert_eq!(done["status"], 200, "{ctx}");
    let body = &done["body"];
    assert_eq!(body["instanceID"], "http-1");
    assert_eq!(body["workflowName"], "chain");
    assert_eq!(body["runtimeStatus"], "COMPLETED", "{ctx}");
    assert_eq!(body["properties"]["dapr.workflow.input"], "20");
    assert_eq!(body["properties"]["dapr.workflow.output"], "25");
    for key in ["createdAt", "lastUpdatedAt"] {
        let t = body[key].as_str().unwrap_or_default();
        assert!(t.starts_with("20") && t.ends_with('Z'), "{key}: {t}");
    }
    assert_eq!(r("http-beta-get"), json!(200));
    let c = r("http-control");
    assert_eq!(c["pause"], 202, "{c}");
    assert_eq!(c["paused"], "SUSPENDED", "{c}");
    assert_eq!(c["resume"], 202, "{c}");
    assert_eq!(c["raise"], 202, "{c}");
    assert_eq!(
        c["done"]["properties"]["dapr.workflow.output"], "\"approved by cy\"",
        "{c}"
    );
    assert_eq!(c["purge"], 202, "{c}");
    assert_eq!(c["after-purge"]["status"], 404, "{c}");
    assert_eq!(
        c["after-purge"]["body"]["errorCode"], "ERR_INSTANCE_ID_NOT_FOUND",
        "{c}"
    );
    assert_eq!(c["purge-running"]["status"], 500, "{c}");
    assert_eq!(
        c["purge-running"]["body"]["errorCode"], "ERR_PURGE_WORKFLOW",
        "{c}"
    );
    assert_eq!(c["terminate"], 202, "{c}");
    assert_eq!(c["terminated"], "TERMINATED", "{c}");
    let http_error = |name: &str, status: u16, code: &str| {
        let got = r(name);
        assert_eq!(got["status"], status, "{name}: {got}");
        assert_eq!(got["body"]["errorCode"], code, "{name}: {got}");
    };
    http_error("http-missing", 404, "ERR_INSTANCE_ID_NOT_FOUND");
    http_error("http-bad-id", 400, "ERR_INSTANCE_ID_INVALID");
    http_error("http-long-id", 400, "ERR_INSTANCE_ID_TOO_LONG");
    http_error(
        "http-bad-component",
        400,
        "ERR_WORKFLOW_COMPONENT_NOT_FOUND",
    );
    http_error("http-raise-missing", 404, "ERR_INSTANCE_ID_NOT_FOUND");
}

/// Which workflow backend a test's component names.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    /// PostgreSQL on 127.0.0.1:5432, database `test`.
    Postgres,
}

/// A workflow backend component with data of the test's own (a file, or tables named for
/// this run), with short leases so that a killed sidecar's work is taken over quickly.
fn backend(dir: &Path, kind: Backend) -> String {
    let resources = dir.join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    let (type_name, connection, table) = match kind {
        Backend::Sqlite => (
            "workflowbackend.sqlite",
            dir.join("wf.db").display().to_string(),
            "workflow".to_string(),
        ),
        Backend::Postgres => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            (
                "workflowbackend.postgresql",
                "host=127.0.0.1 user=postgres dbname=test".to_string(),
                format!("pywf_{nanos}_{}", std::process::id()),
            )
        }
    };
    std::fs::write(
        resources.join("workflows.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: wf\nspec:\n  \
             type: {type_name}\n  version: v1\n  metadata:\n  - name: connectionString\n    \
             value: \"{connection}\"\n  - name: tableName\n    value: {table}\n  \
             - name: leaseDuration\n    value: 2s\n"
        ),
    )
    .unwrap();
    resources.display().to_string()
}

/// kill -9 of the sidecar and of its worker in the middle of a chain of slow activities:
/// a new sidecar and worker finish it with the same result, each activity completed once
/// in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workflow_survives_kill_9_of_sidecar_and_worker() {
    kill_9(Backend::Sqlite).await;
}

/// The same with `workflowbackend.postgresql`: the new sidecar takes the dead one's
/// leases over in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workflow_survives_kill_9_of_sidecar_and_worker_on_postgres() {
    kill_9(Backend::Postgres).await;
}

async fn kill_9(kind: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let resources = backend(dir.path(), kind);
    let report = Report::new(dir.path());
    let first = python_app("py-wf-kill", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "restart")
        .env("ACTIVITY_DELAY", "0.3")
        .env("REPORT_ACTIVITIES", "1")
        .arg("--resources-path")
        .arg(resources.clone())
        .spawn();
    report
        .wait("the chain to start", &[&first], crate::PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "started")
        })
        .await;
    let started = report.of("py-wf-kill", "started");
    let pid = started[0]["pid"].as_i64().unwrap();
    // Once the first activity has run, kill both without warning.
    report
        .wait("the first activity", &[&first], crate::PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "activity")
        })
        .await;
    let kill = |pid: i32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    kill(i32::try_from(first.pid()).unwrap());
    kill(i32::try_from(pid).unwrap());
    let before = report.of("py-wf-kill", "activity").len();
    assert!(
        before < 5,
        "the chain was not cut short: {before} activities ran"
    );

    let mut second = python_app("py-wf-kill", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "restart")
        .env("WAIT_FOR", "restart-1")
        .env("REPORT_ACTIVITIES", "1")
        .arg("--resources-path")
        .arg(resources)
        .spawn();
    finish(&report, "py-wf-kill", &mut second).await;
    let ctx = report.context(&[&second]);
    let steps = report.steps("py-wf-kill");
    assert_eq!(
        result(&steps, "resumed", &ctx),
        &json!({"status": "COMPLETED", "output": "105"}),
        "{ctx}"
    );
    let inputs: Vec<i64> = report
        .of("py-wf-kill", "activity")
        .iter()
        .filter_map(|e| e["input"].as_i64())
        .collect();
    for x in 100..105 {
        assert!(
            inputs.contains(&x),
            "activity with input {x} never ran: {inputs:?}"
        );
    }
    let history = result(&steps, "history", &ctx).as_array().unwrap().clone();
    let count = |kind: &str| history.iter().filter(|e| *e == kind).count();
    assert_eq!(count("TASK_SCHEDULED"), 5, "{history:?}");
    assert_eq!(
        count("TASK_COMPLETED"),
        5,
        "each activity completes once in history: {history:?}"
    );
    assert_eq!(count("EXECUTION_COMPLETED"), 1, "{history:?}");
    assert_eq!(
        error(&steps, "history-missing", &ctx)["code"],
        "NOT_FOUND",
        "{ctx}"
    );
}

/// `trellis workflow ...` on the instances a sidecar ran, from the same store.
async fn cli(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["workflow"];
    all.extend_from_slice(args);
    let (code, process) = crate::run_to_end(crate::trellis(&all, dir)).await;
    (code, process.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workflow_cli_reads_and_changes_the_store_the_sidecar_used() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-wf-cli", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "control")
        .spawn();
    finish(&report, "py-wf-cli", &mut app).await;
    let app_id = ["--app-id", "py-wf-cli"];
    let with = |args: &[&'static str]| [args, &app_id[..]].concat();

    let (code, out) = cli(dir.path(), &with(&["list"])).await;
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("http-1 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("chain") && line.contains("COMPLETED"),
        "{line}"
    );
    let (_, out) = cli(dir.path(), &with(&["list", "--status", "terminated"])).await;
    assert!(out.contains("term-1") && !out.contains("http-1 "), "{out}");

    let (code, out) = cli(dir.path(), &with(&["get", "http-1"])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"runtimeStatus\": \"COMPLETED\""), "{out}");
    assert!(out.contains("\"dapr.workflow.output\": \"25\""), "{out}");

    let (code, out) = cli(dir.path(), &with(&["history", "http-1"])).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("taskCompleted")).count(),
        5,
        "{out}"
    );
    assert!(
        out.contains("executionCompleted") && out.contains("result=25"),
        "{out}"
    );

    let (code, out) = cli(dir.path(), &with(&["purge", "http-1"])).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("purged 1 instance(s)"), "{out}");
    let (code, out) = cli(dir.path(), &with(&["get", "http-1"])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no workflow instance \"http-1\""), "{out}");
    let (code, out) = cli(dir.path(), &with(&["terminate", "nobody"])).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no workflow instance with id \"nobody\""),
        "{out}"
    );
}

/// Two replicas of one app id (two `trellis run`, one machine, the embedded store they
/// share): every instance completes once, and both replicas' workers run activities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_an_app_share_the_instances() {
    let dir = tempfile::tempdir().unwrap();
    // Each replica takes at most two turns and two activities at a time, so that the
    // one whose commits wake it first cannot take everything (spreading work is what
    // these limits are for).
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
         workflow:\n    maxConcurrentWorkflowInvocations: 2\n    maxConcurrentActivityInvocations: 2\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let report = Report::new(dir.path());
    let server = python_app("py-wf-rep", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "replica")
        .env("ACTIVITY_DELAY", "0.05")
        .env("REPORT_ACTIVITIES", "1")
        .arg("--config")
        .arg(config.clone())
        .spawn();
    report
        .wait("the first replica", &[&server], crate::PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "replica-ready")
        })
        .await;
    let mut starter = python_app("py-wf-rep", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "replica")
        .env("STARTER", "1")
        .env("ACTIVITY_DELAY", "0.05")
        .env("REPORT_ACTIVITIES", "1")
        .arg("--config")
        .arg(config)
        .spawn();
    finish(&report, "py-wf-rep", &mut starter).await;
    let ctx = report.context(&[&starter, &server]);
    let steps = report.steps("py-wf-rep");
    let results = result(&steps, "replicated", &ctx)
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(results.len(), 20, "{ctx}");
    for (i, (id, outcome)) in results.iter().enumerate() {
        let n: i64 = id.trim_start_matches("rep-").parse().unwrap();
        assert_eq!(
            outcome,
            &json!({"status": "COMPLETED", "output": (n * 10 + 5).to_string()}),
            "{i}: {id}\n{ctx}"
        );
    }
    let completions = result(&steps, "completions", &ctx)
        .as_object()
        .unwrap()
        .clone();
    assert!(
        completions.values().all(|c| c == &json!(5)),
        "{completions:?}"
    );
    let pids: std::collections::BTreeSet<i64> = report
        .of("py-wf-rep", "activity")
        .iter()
        .filter_map(|e| e["pid"].as_i64())
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "both replicas' workers ran activities: {pids:?}\n{ctx}"
    );
}

/// Dapr's multi-app workflows: an activity and a child workflow run by another app's
/// worker (`app_id=` in the SDK), through the store both sidecars share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_runs_an_activity_and_a_child_on_another_app() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let other = python_app("py-wf-other", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "replica")
        .env("REPORT_ACTIVITIES", "1")
        .spawn();
    report
        .wait("the other app", &[&other], crate::PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "replica-ready")
        })
        .await;
    let mut app = python_app("py-wf-multi", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "multi")
        .env("OTHER_APP", "py-wf-other")
        .env("REPORT_ACTIVITIES", "1")
        .spawn();
    finish(&report, "py-wf-multi", &mut app).await;
    let ctx = report.context(&[&app, &other]);
    let steps = report.steps("py-wf-multi");
    assert_eq!(
        result(&steps, "multi-app", &ctx),
        &json!({"status": "COMPLETED", "output": "7"}),
        "1 + 1 on the other app, then a chain of 5 there\n{ctx}"
    );
    assert_eq!(
        result(&steps, "child-here", &ctx),
        &Value::Null,
        "the child is the other app's instance, not this one's\n{ctx}"
    );
    assert!(report.of("py-wf-multi", "activity").is_empty(), "{ctx}");
    assert_eq!(report.of("py-wf-other", "activity").len(), 6, "{ctx}");
}

/// A connected worker's stream ends when the sidecar stops, so its graceful shutdown does
/// not wait for the worker to go first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_a_connected_worker_stops_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let report = Report::new(dir.path());
    let mut app = python_app("py-wf-stop", dir.path(), &report, "workflows.py")
        .env("SCENARIO", "replica")
        .spawn();
    report
        .wait("the worker", &[&app], crate::PATIENCE, |events| {
            events.iter().any(|e| e["event"] == "replica-ready")
        })
        .await;
    let started = std::time::Instant::now();
    app.signal(nix::sys::signal::Signal::SIGTERM);
    let code = app.wait_exit(Duration::from_secs(15)).await;
    assert!(
        code.is_some(),
        "still running 15 s after SIGTERM\n{}",
        report.context(&[&app])
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?} to stop",
        started.elapsed()
    );
}
