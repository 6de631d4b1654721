//! The engine with a worker written here against the protocol: a chain of activities, a
//! fan-out, a worker that disconnects holding a turn, and two engines of one app sharing a
//! database. Each test runs on every store (`sqlite::*`, `postgres::*`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_workflow::engine::StartRequest;
use trellis_workflow::proto::WorkItem;
use trellis_workflow::proto::work_item::Request;
use trellis_workflow::{Engine, EngineOptions, Status, conformance};

use crate::Db;

/// Each test body, run once per store.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(&crate::Db::sqlite()).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                let db = crate::Db::postgres();
                super::$name(&db).await;
                db.drop_tables().await;
            })*
        }
    };
}

on_every_store!(
    a_chain_of_activities_completes_with_its_results_in_history,
    a_fan_out_of_200_activities_completes,
    a_turn_held_by_a_worker_that_disconnects_goes_to_another,
    terminate_and_purge_and_events_to_unknown_instances,
    two_engines_of_one_app_split_the_instances_and_run_each_once,
);

/// What one worker did.
#[derive(Default)]
struct Tally {
    activities: AtomicUsize,
    instances: Mutex<HashSet<String>>,
}

/// Runs a worker on `engine` until the task is aborted.
fn worker(engine: Engine, fan: i32, rounds: i32) -> tokio::task::JoinHandle<()> {
    counted_worker(engine, fan, rounds, Arc::default())
}

/// [`worker`], counting what it does in `tally`.
fn counted_worker(
    engine: Engine,
    fan: i32,
    rounds: i32,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = engine.connect_worker();
        while let Some(item) = conn.next().await {
            // Each item answered on its own, as the SDKs do, so that many commits are in
            // flight at once.
            let (engine, tally) = (engine.clone(), tally.clone());
            tokio::spawn(async move { answer(&engine, item, fan, rounds, &tally).await });
        }
    })
}

async fn answer(engine: &Engine, item: WorkItem, fan: i32, rounds: i32, tally: &Tally) {
    match item.request {
        Some(Request::WorkflowRequest(req)) => {
            if let Ok(mut seen) = tally.instances.lock() {
                seen.insert(req.instance_id.clone());
            }
            let res = conformance::scripted_turn(&req, fan, rounds);
            engine.complete_workflow(res).await.expect("complete turn");
        }
        Some(Request::ActivityRequest(req)) => {
            tally.activities.fetch_add(1, Ordering::SeqCst);
            let res = conformance::scripted_activity(&req);
            engine
                .complete_activity(res)
                .await
                .expect("complete activity");
        }
        _ => {}
    }
}

async fn engine(db: &Db, app: &str) -> Engine {
    Engine::start(db.open().await, EngineOptions::new(app))
}

async fn run_to_end(engine: &Engine, id: &str) -> trellis_workflow::InstanceMeta {
    engine
        .wait(
            id,
            trellis_workflow::store::is_terminal,
            Some(Duration::from_secs(30)),
        )
        .await
        .expect("wait")
        .expect("the instance exists")
}

async fn a_chain_of_activities_completes_with_its_results_in_history(db: &Db) {
    let engine = engine(db, "chain-app").await;
    let w = worker(engine.clone(), 1, 5);
    let id = engine
        .start_instance(StartRequest {
            instance_id: Some("chain-1".into()),
            name: "chain".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let meta = run_to_end(&engine, &id).await;
    assert_eq!(meta.status, Status::Completed, "{meta:?}");
    assert_eq!(meta.output.as_deref(), Some("15"), "1+2+3+4+5");
    let history = engine.history(&id).await.expect("history");
    let count = |name: &str| {
        history
            .iter()
            .filter(|e| trellis_workflow::events::event_name(e) == name)
            .count()
    };
    assert_eq!(count("taskScheduled"), 5);
    assert_eq!(count("taskCompleted"), 5, "each result once");
    assert_eq!(count("workflowStarted"), 6, "one per turn");
    assert_eq!(count("executionCompleted"), 1);
    w.abort();
}

async fn a_fan_out_of_200_activities_completes(db: &Db) {
    let engine = engine(db, "fan-app").await;
    let w = worker(engine.clone(), 200, 1);
    let id = engine
        .start_instance(StartRequest {
            name: "fan".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let meta = run_to_end(&engine, &id).await;
    assert_eq!(
        meta.output.as_deref(),
        Some((1..=200).sum::<i64>().to_string().as_str())
    );
    w.abort();
}

async fn a_turn_held_by_a_worker_that_disconnects_goes_to_another(db: &Db) {
    let engine = engine(db, "redrive-app").await;
    let mut quitter = engine.connect_worker();
    let id = engine
        .start_instance(StartRequest {
            name: "chain".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let first = tokio::time::timeout(Duration::from_secs(10), quitter.next())
        .await
        .expect("the first worker gets the turn")
        .expect("an item");
    assert!(matches!(first.request, Some(Request::WorkflowRequest(_))));
    drop(quitter);
    let w = worker(engine.clone(), 1, 2);
    let meta = run_to_end(&engine, &id).await;
    assert_eq!(meta.status, Status::Completed);
    assert_eq!(meta.output.as_deref(), Some("3"));
    w.abort();
}

async fn terminate_and_purge_and_events_to_unknown_instances(db: &Db) {
    let engine = engine(db, "term-app").await;
    // A worker that never answers turns keeps the instance running.
    let mut idle = engine.connect_worker();
    let id = engine
        .start_instance(StartRequest {
            name: "slow".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let _ = tokio::time::timeout(Duration::from_secs(10), idle.next()).await;
    assert!(matches!(
        engine.purge(&id, false, false).await,
        Err(trellis_workflow::WorkflowError::Refused(_))
    ));
    drop(idle);
    let w = worker(engine.clone(), 1, 1_000_000);
    engine
        .terminate(&id, Some("\"bye\"".into()), true)
        .await
        .expect("terminate");
    let meta = run_to_end(&engine, &id).await;
    assert_eq!(meta.status, Status::Terminated);
    assert_eq!(meta.output.as_deref(), Some("\"bye\""));
    assert_eq!(
        engine
            .purge(&id, true, false)
            .await
            .expect("purge")
            .instances,
        1
    );
    assert!(matches!(
        engine.raise_event(&id, "x", None).await,
        Err(trellis_workflow::WorkflowError::NotFound(_))
    ));
    w.abort();
}

/// Two sidecars of one app on one database: both run turns and activities, and with
/// leases exclusive every activity runs once and every instance completes once.
async fn two_engines_of_one_app_split_the_instances_and_run_each_once(db: &Db) {
    const INSTANCES: usize = 30;
    const ROUNDS: i32 = 3;
    // Few turns in flight per engine and a quick poll, so that neither takes everything.
    let options = || EngineOptions {
        poll: Duration::from_millis(20),
        max_workflows: 4,
        max_activities: 4,
        ..EngineOptions::new("split-app")
    };
    let engines = [
        Engine::start(db.open().await, options()),
        Engine::start(db.open().await, options()),
    ];
    let tallies = [Arc::new(Tally::default()), Arc::new(Tally::default())];
    let workers: Vec<_> = engines
        .iter()
        .zip(&tallies)
        .map(|(e, t)| counted_worker(e.clone(), 1, ROUNDS, t.clone()))
        .collect();
    let mut ids = Vec::new();
    for n in 0..INSTANCES {
        let id = engines[n % 2]
            .start_instance(StartRequest {
                instance_id: Some(format!("split-{n}")),
                name: "chain".into(),
                ..StartRequest::default()
            })
            .await
            .expect("start");
        ids.push(id);
    }
    for id in &ids {
        let meta = run_to_end(&engines[0], id).await;
        assert_eq!(meta.status, Status::Completed, "{meta:?}");
        assert_eq!(meta.output.as_deref(), Some("6"), "1+2+3");
        let history = engines[1].history(id).await.expect("history");
        let count = |name: &str| {
            history
                .iter()
                .filter(|e| trellis_workflow::events::event_name(e) == name)
                .count()
        };
        assert_eq!(count("executionCompleted"), 1, "{id}");
        assert_eq!(count("taskCompleted"), ROUNDS as usize, "{id}");
    }
    let ran: Vec<usize> = tallies
        .iter()
        .map(|t| t.activities.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        ran.iter().sum::<usize>(),
        INSTANCES * ROUNDS as usize,
        "every activity ran once: {ran:?}"
    );
    for (n, tally) in tallies.iter().enumerate() {
        let seen = tally.instances.lock().map(|s| s.len()).unwrap_or(0);
        assert!(
            seen > 0 && ran[n] > 0,
            "engine {n} ran no turns or no activities: {seen} instances, {ran:?} activities"
        );
    }
    for w in workers {
        w.abort();
    }
}

#[tokio::test]
async fn finished_instances_are_purged_after_their_retention() {
    let db = crate::Db::sqlite();
    let mut opts = EngineOptions::new("retention-app");
    opts.retention = vec![(Status::Completed, Duration::from_millis(200))];
    let engine = Engine::start(db.open().await, opts);
    let w = worker(engine.clone(), 1, 1);
    let id = engine
        .start_instance(StartRequest {
            name: "short".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    assert_eq!(run_to_end(&engine, &id).await.status, Status::Completed);
    // The sweep runs every second at the least; the instance goes within a few.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.get(&id).await.expect("get").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not purged after its retention"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine.history(&id).await.expect("history").is_empty());
    w.abort();
}

/// A worker that keeps histories gets only what was committed since its last turn of an
/// instance, and what it rebuilds is the whole history.
#[tokio::test]
async fn a_stateful_worker_gets_history_deltas() {
    let db = crate::Db::sqlite();
    let engine = engine(&db, "stateful-app").await;
    let mut conn = engine.connect_stateful_worker();
    let id = engine
        .start_instance(StartRequest {
            name: "chain".into(),
            ..StartRequest::default()
        })
        .await
        .expect("start");
    let mut cache: Vec<trellis_workflow::proto::HistoryEvent> = Vec::new();
    let mut deltas = 0;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), conn.next())
            .await
            .expect("a work item")
            .expect("the engine is up");
        match item.request {
            Some(Request::WorkflowRequest(mut req)) => {
                let history = match req.cached_history {
                    Some(c) => {
                        deltas += 1;
                        assert_eq!(
                            c.event_count as usize,
                            cache.len(),
                            "the count is what the worker was given"
                        );
                        let mut h = cache.clone();
                        h.extend(req.past_events.clone());
                        h
                    }
                    None => req.past_events.clone(),
                };
                assert_eq!(
                    history,
                    engine.history(&id).await.expect("history"),
                    "rebuilt = committed"
                );
                cache = history.clone();
                req.past_events = history;
                let res = conformance::scripted_turn(&req, 1, 3);
                let ended = trellis_workflow::events::ends_execution(&res);
                engine.complete_workflow(res).await.expect("complete turn");
                if ended {
                    break;
                }
            }
            Some(Request::ActivityRequest(req)) => {
                engine
                    .complete_activity(conformance::scripted_activity(&req))
                    .await
                    .expect("complete activity");
            }
            _ => {}
        }
    }
    assert_eq!(deltas, 3, "every turn after the first carried a delta");
    assert_eq!(run_to_end(&engine, &id).await.output.as_deref(), Some("6"));
}
