//! The conformance suite every job store runs against its real backend: storing and
//! overwriting, reading back what the app wrote, deleting by name and prefix, apps kept
//! apart, leasing (due jobs only, each to one owner, expired leases taken over), settling
//! only under the lease and version, and the scheduler triggering a job end to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::schedule::Timing;
use crate::store::{JobStore, Settle, StoredJob};
use crate::{
    FailurePolicy, JobData, JobError, JobSpec, Scheduler, SchedulerOptions, Trigger,
    TriggerOutcome, now_ms,
};

fn spec(name: &str) -> JobSpec {
    JobSpec {
        name: name.to_string(),
        schedule: Some("@every 1s".into()),
        repeats: Some(5),
        due_time: Some("10s".into()),
        ttl: Some("1h".into()),
        data: Some(JobData {
            type_url: "type.googleapis.com/google.protobuf.Value".into(),
            value: vec![1, 2, 3],
        }),
        failure_policy: FailurePolicy::Constant {
            interval: Duration::from_millis(1500),
            max_retries: Some(7),
        },
    }
}

fn at(first: i64) -> Timing {
    Timing {
        first,
        expires: None,
    }
}

/// Runs every case; `app` must be unique to this run (tests share databases).
pub async fn run(store: Arc<dyn JobStore>, app: &str) {
    crud(store.as_ref(), app).await;
    leases(store.as_ref(), &format!("{app}-lease")).await;
    scheduler(store, &format!("{app}-sched")).await;
}

async fn crud(store: &dyn JobStore, app: &str) {
    let other = format!("{app}-other");
    let s = spec("a");
    store.put(app, &s, at(1_000), false).await.expect("put");
    let got = store.get(app, "a").await.expect("get").expect("stored");
    assert_eq!(got.spec, s, "the job reads back as written");
    assert_eq!(
        (got.tick, got.due_at, got.count, got.attempts),
        (1_000, 1_000, 0, 0)
    );
    assert_eq!(
        store.put(app, &s, at(1_000), false).await,
        Err(JobError::AlreadyExists("a".into())),
        "no overwrite by default"
    );
    let mut changed = s.clone();
    changed.schedule = Some("@every 2s".into());
    changed.data = None;
    changed.failure_policy = FailurePolicy::Drop;
    store
        .put(app, &changed, at(2_000), true)
        .await
        .expect("overwrite");
    let got = store.get(app, "a").await.expect("get").expect("stored");
    assert_eq!(got.spec, changed);
    assert_eq!(got.tick, 2_000);
    assert!(
        store.get(&other, "a").await.expect("get").is_none(),
        "apps are apart"
    );
    for name in ["pre-1", "pre-2", "post"] {
        store
            .put(app, &spec(name), at(5_000), false)
            .await
            .expect("put");
    }
    store
        .put(&other, &spec("pre-3"), at(5_000), false)
        .await
        .expect("put");
    let names: Vec<String> = store
        .list(app)
        .await
        .expect("list")
        .into_iter()
        .map(|j| j.spec.name)
        .collect();
    assert_eq!(names, ["a", "post", "pre-1", "pre-2"]);
    assert_eq!(store.delete_prefix(app, "pre-").await.expect("prefix"), 2);
    assert_eq!(
        store.list(&other).await.expect("list").len(),
        1,
        "other apps untouched"
    );
    assert!(store.delete(app, "post").await.expect("delete"));
    assert!(!store.delete(app, "post").await.expect("delete again"));
    assert_eq!(store.delete_prefix(app, "").await.expect("all"), 1);
    assert!(store.list(app).await.expect("list").is_empty());
    assert_eq!(store.next_due(app).await.expect("next"), None);
    store.delete_prefix(&other, "").await.expect("clean up");
}

async fn leases(store: &dyn JobStore, app: &str) {
    store
        .put(app, &spec("due"), at(1_000), false)
        .await
        .expect("put");
    store
        .put(app, &spec("later"), at(9_000), false)
        .await
        .expect("put");
    assert_eq!(store.next_due(app).await.expect("next"), Some(1_000));
    let got = store
        .lease_due(app, "one", 5_000, 6_000, 10)
        .await
        .expect("lease");
    assert_eq!(
        got.iter().map(|j| j.spec.name.as_str()).collect::<Vec<_>>(),
        ["due"]
    );
    let leased: &StoredJob = &got[0];
    assert!(
        store
            .lease_due(app, "two", 5_000, 6_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "held"
    );
    assert_eq!(
        store.next_due(app).await.expect("next"),
        Some(6_000),
        "the lease's end"
    );
    // The lease ran out: another owner takes the tick over, and the first can no longer
    // settle it.
    let taken = store
        .lease_due(app, "two", 6_500, 7_000, 10)
        .await
        .expect("lease");
    assert_eq!(taken.len(), 1);
    let next = Settle::Next {
        tick: 2_000,
        due_at: 2_000,
        count: 1,
        attempts: 0,
    };
    assert!(
        !store
            .settle(app, "due", "one", leased.version, next)
            .await
            .expect("settle")
    );
    assert!(
        store
            .settle(app, "due", "two", leased.version, next)
            .await
            .expect("settle")
    );
    let now = store.get(app, "due").await.expect("get").expect("kept");
    assert_eq!((now.tick, now.due_at, now.count), (2_000, 2_000, 1));
    // Replaced while leased: the old lease settles nothing.
    let again = store
        .lease_due(app, "one", 3_000, 4_000, 10)
        .await
        .expect("lease");
    assert_eq!(again.len(), 1);
    store
        .put(app, &spec("due"), at(50_000), true)
        .await
        .expect("overwrite");
    assert!(
        !store
            .settle(app, "due", "one", again[0].version, Settle::Finish)
            .await
            .expect("settle")
    );
    assert!(store.get(app, "due").await.expect("get").is_some());
    let last = store
        .lease_due(app, "one", 60_000, 61_000, 10)
        .await
        .expect("lease");
    assert_eq!(last.len(), 2);
    for j in &last {
        assert!(
            store
                .settle(app, &j.spec.name, "one", j.version, Settle::Finish)
                .await
                .expect("finish")
        );
    }
    assert!(
        store.list(app).await.expect("list").is_empty(),
        "finished jobs are deleted"
    );
}

#[derive(Default)]
struct Counter {
    fired: AtomicUsize,
    fail_first: AtomicUsize,
}

#[async_trait]
impl Trigger for Counter {
    async fn trigger(&self, _: &StoredJob) -> TriggerOutcome {
        if self.fail_first.load(Ordering::SeqCst) > 0 {
            self.fail_first.fetch_sub(1, Ordering::SeqCst);
            return TriggerOutcome::Failed("not yet".into());
        }
        self.fired.fetch_add(1, Ordering::SeqCst);
        TriggerOutcome::Delivered
    }
}

async fn scheduler(store: Arc<dyn JobStore>, app: &str) {
    let mut opts = SchedulerOptions::new(app);
    opts.poll = Duration::from_millis(20);
    let sched = Scheduler::new(store.clone(), opts);
    let counter = Arc::new(Counter::default());
    counter.fail_first.store(1, Ordering::SeqCst);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(sched.clone().run(counter.clone(), stopped));
    let mut once = JobSpec {
        name: "once".into(),
        due_time: Some("0s".into()),
        ..JobSpec::default()
    };
    once.failure_policy = FailurePolicy::Constant {
        interval: Duration::from_millis(10),
        max_retries: Some(2),
    };
    sched.schedule(&once, false).await.expect("schedule");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(app, "once").await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the one-shot job did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        counter.fired.load(Ordering::SeqCst),
        1,
        "fired once, after one failure"
    );
    assert!(
        store.get(app, "once").await.expect("get").is_none(),
        "a finished one-shot job is deleted"
    );
    let _ = now_ms();
    stop.send_replace(true);
    let _ = task.await;
}
