//! Jobs through real `trellis` processes: jobs survive a killed sidecar, a tick missed
//! while it was down fires once (not once per missed tick) when it is back, and two
//! replicas of one app on one data directory trigger each tick exactly once between them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use trellis_test_support::{SubscriberApp, request, wait_until};

use crate::{PATIENCE, sidecar};

/// A `scheduler.sqlite` component on the data dir's `jobs.db` with short leases, so that
/// a tick a killed sidecar held goes back quickly.
fn resources(dir: &Path) -> std::path::PathBuf {
    let res = dir.join("resources");
    std::fs::create_dir_all(&res).unwrap();
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: jobs\nspec:\n  type: scheduler.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n  - name: leaseDuration\n    value: 2s\n",
        dir.join("jobs.db").display()
    );
    std::fs::write(res.join("jobs.yaml"), yaml).unwrap();
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_a_killed_sidecar_and_a_missed_tick_fires_once() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(dir.path());
    let app = SubscriberApp::start(None).await;
    let start = || {
        sidecar("cron", dir.path())
            .app_port(app.port())
            .arg("--resources-path")
            .arg(res.display().to_string())
            .spawn()
    };
    let first = start();
    first.wait_healthy().await;
    let r = request(
        "POST",
        &first.url("/v1.0/jobs/tick"),
        &[],
        json!({"schedule": "@every 2s", "data": {"n": 1}}).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request(
        "POST",
        &first.url("/v1.0/jobs/later"),
        &[],
        json!({"dueTime": "3s", "data": "once"}).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(app.wait_for("/job/tick", 1, PATIENCE).await.len(), 1);
    first.signal(Signal::SIGKILL);
    // Down for three ticks of `tick`, and past `later`'s due time.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = app.received_on("/job/tick").len();
    assert_eq!(
        app.received_on("/job/later").len(),
        0,
        "nothing fires while down"
    );

    let second = start();
    second.wait_healthy().await;
    let later = app.wait_for("/job/later", 1, PATIENCE).await;
    assert_eq!(later[0].json(), json!("once"));
    let after = app.wait_for("/job/tick", before + 1, PATIENCE).await;
    assert_eq!(after.last().unwrap().json(), json!({"n": 1}));
    // The missed ticks come as one: the next only at the schedule's next tick, 2 s on.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.received_on("/job/tick").len(),
        before + 1,
        "three missed ticks fire once"
    );
    assert_eq!(app.received_on("/job/later").len(), 1);
    // The job is still there, the one-shot one is gone.
    let r = request("GET", &second.url("/v1.0/jobs/tick"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request("GET", &second.url("/v1.0/jobs/later"), &[], "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    second.signal(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_trigger_each_tick_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let apps = [
        SubscriberApp::start(None).await,
        SubscriberApp::start(None).await,
    ];
    let replicas: Vec<_> = apps
        .iter()
        .map(|a| sidecar("replicated", dir.path()).app_port(a.port()).spawn())
        .collect();
    for r in &replicas {
        r.wait_healthy().await;
    }
    const JOBS: usize = 20;
    const REPEATS: usize = 5;
    for i in 0..JOBS {
        let r = request(
            "POST",
            &replicas[i % 2].url(&format!("/v1.0/jobs/job-{i}")),
            &[],
            json!({"schedule": "@every 200ms", "repeats": REPEATS, "dueTime": "0s"}).to_string(),
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let total = || apps.iter().map(|a| a.received().len()).sum::<usize>();
    assert!(
        wait_until(PATIENCE, || async { total() >= JOBS * REPEATS }).await,
        "only {} of {} triggers arrived",
        total(),
        JOBS * REPEATS
    );
    // Every job has finished: nothing more may arrive.
    let done = wait_until(PATIENCE, || async {
        request("GET", &replicas[0].url("/v1.0/jobs/job-0"), &[], "")
            .await
            .status
            == 500
    })
    .await;
    assert!(done);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for a in &apps {
        for r in a.received() {
            *per_job.entry(r.path.clone()).or_default() += 1;
        }
    }
    assert_eq!(per_job.len(), JOBS);
    for (job, n) in &per_job {
        assert_eq!(*n, REPEATS, "{job} fired {n} times");
    }
    eprintln!(
        "triggers per replica: {} / {}",
        apps[0].received().len(),
        apps[1].received().len()
    );
    for r in &replicas {
        r.signal(Signal::SIGTERM);
    }
}
