//! The engine with a worker written here against the protocol: a chain of activities, a
//! fan-out, and a worker that disconnects holding a turn.

use std::sync::Arc;
use std::time::Duration;

use trellis_workflow::engine::StartRequest;
use trellis_workflow::proto::work_item::Request;
use trellis_workflow::{Engine, EngineOptions, Status, WorkflowStore, conformance};

use crate::sqlite_store;

/// Runs a worker on `engine` until the task is aborted.
fn worker(engine: Engine, fan: i32, rounds: i32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = engine.connect_worker();
        while let Some(item) = conn.next().await {
            match item.request {
                Some(Request::WorkflowRequest(req)) => {
                    let res = conformance::scripted_turn(&req, fan, rounds);
                    engine.complete_workflow(res).await.expect("complete turn");
                }
                Some(Request::ActivityRequest(req)) => {
                    let res = conformance::scripted_activity(&req);
                    engine
                        .complete_activity(res)
                        .await
                        .expect("complete activity");
                }
                _ => {}
            }
        }
    })
}

async fn engine(dir: &tempfile::TempDir, app: &str) -> Engine {
    let store: Arc<dyn WorkflowStore> = Arc::new(sqlite_store(dir).await);
    Engine::start(store, EngineOptions::new(app))
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

#[tokio::test]
async fn a_chain_of_activities_completes_with_its_results_in_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir, "chain-app").await;
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

#[tokio::test]
async fn a_fan_out_of_200_activities_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir, "fan-app").await;
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

#[tokio::test]
async fn a_turn_held_by_a_worker_that_disconnects_goes_to_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir, "redrive-app").await;
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

#[tokio::test]
async fn terminate_and_purge_and_events_to_unknown_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir, "term-app").await;
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

#[tokio::test]
async fn finished_instances_are_purged_after_their_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn WorkflowStore> = Arc::new(sqlite_store(&dir).await);
    let mut opts = EngineOptions::new("retention-app");
    opts.retention = vec![(Status::Completed, Duration::from_millis(200))];
    let engine = Engine::start(store, opts);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir, "stateful-app").await;
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
                let ended = conformance::completes(&res);
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
