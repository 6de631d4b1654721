//! `scheduler.postgresql` against the PostgreSQL on 127.0.0.1:5432 (trust auth, database
//! `test`): the conformance suite and two stores (as two sidecars) sharing the ticks. Each
//! test has a table of its own, so tests run in parallel and again on the same database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use trellis_jobs::postgres::PostgresJobStore;
use trellis_jobs::{
    JobSpec, JobStore, Metadata, Scheduler, SchedulerOptions, StoredJob, Trigger, TriggerOutcome,
};

pub const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A store on a fresh table, or `None` (the test says it is skipped) without a server.
async fn store() -> Option<(Arc<dyn JobStore>, String)> {
    let table = format!("jobs_{}", uuid_like());
    match PostgresJobStore::open(&Metadata::from_pairs([
        ("connectionString", URL),
        ("tableName", table.as_str()),
    ]))
    .await
    {
        Ok(s) => Some((Arc::new(s), table)),
        Err(e) => {
            eprintln!("SKIPPED: no postgresql at {URL}: {e}");
            None
        }
    }
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}_{nanos}", std::process::id())
}

async fn drop_table(table: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(URL, tokio_postgres::NoTls).await {
        let running = tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await;
        drop(client);
        let _ = running.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let Some((store, table)) = store().await else {
        return;
    };
    trellis_jobs::conformance::run(store, "app").await;
    drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_share_the_ticks() {
    let Some((a, table)) = store().await else {
        return;
    };
    let b: Arc<dyn JobStore> = Arc::new(
        PostgresJobStore::open(&Metadata::from_pairs([
            ("connectionString", URL),
            ("tableName", table.as_str()),
        ]))
        .await
        .expect("open"),
    );
    shared_ticks(a, b, "shop").await;
    drop_table(&table).await;
}

/// Counts each job's triggers per tick time.
#[derive(Default)]
struct Ticks(Mutex<HashMap<(String, i64), usize>>);

#[async_trait]
impl Trigger for Ticks {
    async fn trigger(&self, job: &StoredJob) -> TriggerOutcome {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *seen.entry((job.spec.name.clone(), job.tick)).or_default() += 1;
        TriggerOutcome::Delivered
    }
}

/// Two schedulers of one app, each on its own store of one database, run 40 jobs that
/// tick every 100 ms for 5 ticks: every tick of every job fires exactly once between them.
pub async fn shared_ticks(a: Arc<dyn JobStore>, b: Arc<dyn JobStore>, app: &str) {
    let ticks = Arc::new(Ticks::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut scheds = Vec::new();
    for store in [a, b] {
        let mut opts = SchedulerOptions::new(app);
        opts.poll = Duration::from_millis(10);
        let s = Scheduler::new(store, opts);
        tasks.push(tokio::spawn(s.clone().run(ticks.clone(), stopped.clone())));
        scheds.push(s);
    }
    for i in 0..40 {
        let spec = JobSpec {
            name: format!("job-{i}"),
            schedule: Some("@every 100ms".into()),
            repeats: Some(5),
            ..JobSpec::default()
        };
        scheds[i % 2]
            .schedule(&spec, false)
            .await
            .expect("schedule");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !scheds[0].list().await.expect("list").is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the jobs did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    let seen = ticks.0.lock().unwrap_or_else(|p| p.into_inner());
    assert_eq!(seen.len(), 200, "40 jobs x 5 ticks");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ticks fired more than once: {twice:?}");
}
