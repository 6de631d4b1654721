//! `workflowbackend.postgresql` against the PostgreSQL on 127.0.0.1:5432 (trust auth,
//! database `test`): the conformance suite, the table setup of sidecars starting at once,
//! and leases that stay exclusive while several stores lease at once. Each test has
//! tables of its own, so tests run in parallel and again on the same database.

use std::collections::HashSet;

use trellis_workflow::postgres::PostgresWorkflowStore;
use trellis_workflow::{Metadata, WorkflowStore, conformance, ids};

pub const URL: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// A table prefix no other test (or earlier run) uses.
pub fn fresh_table() -> String {
    format!("wft_{}", ids::random().to_lowercase().replace('-', "_"))
}

pub async fn store(table: &str) -> PostgresWorkflowStore {
    PostgresWorkflowStore::open(&Metadata::from_pairs([
        ("connectionString", URL),
        ("tableName", table),
    ]))
    .await
    .expect("open the postgresql store")
}

/// Drops the tables of `table`.
pub async fn drop_tables(table: &str) {
    let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let running = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}_instances, {table}_history, {table}_inbox, \
             {table}_activities"
        ))
        .await
        .expect("drop the test's tables");
    drop(client);
    let _ = running.await;
}

/// Starts instances `i0`..`i{n-1}` of `app` (execution `e1`).
async fn create_instances(st: &PostgresWorkflowStore, app: &str, n: usize) {
    for i in 0..n {
        st.create(conformance::new_instance(app, &format!("i{i}")))
            .await
            .expect("create");
    }
}

#[tokio::test]
async fn the_postgres_store_passes_the_conformance_suite() {
    let table = fresh_table();
    conformance::run(&store(&table).await).await;
    drop_tables(&table).await;
}

#[tokio::test]
async fn sidecars_opening_one_new_database_at_once_all_succeed() {
    let table = fresh_table();
    let opens = (0..6).map(|_| {
        let table = table.clone();
        tokio::spawn(async move { store(&table).await })
    });
    for open in opens {
        open.await.expect("an open task");
    }
    drop_tables(&table).await;
}

#[tokio::test]
async fn bad_metadata_is_refused() {
    for pairs in [
        vec![("tableName", "x")],
        vec![("connectionString", URL), ("tableName", "x; drop table y")],
        vec![("connectionString", "host=x sslmode=verify-full")],
        vec![("connectionString", URL), ("timeout", "soon")],
    ] {
        let err = PostgresWorkflowStore::open(&Metadata::from_pairs(pairs.clone()))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("metadata"), "{pairs:?}: {err}");
    }
}

/// Stores leasing at once from one database get disjoint instances and activities.
#[tokio::test]
async fn concurrent_leases_are_disjoint() {
    let table = fresh_table();
    let stores = [
        store(&table).await,
        store(&table).await,
        store(&table).await,
    ];
    let app = format!("split-{}", ids::random());
    create_instances(&stores[0], &app, 60).await;
    let now = trellis_workflow::now_ms();
    let leases = futures_util::future::join_all(stores.iter().enumerate().flat_map(|(s, st)| {
        let app = app.clone();
        (0..4).map(move |k| {
            let (app, owner) = (app.clone(), format!("owner-{s}-{k}"));
            async move {
                st.lease_workflows(&app, &owner, now, now + 60_000, 7)
                    .await
                    .expect("lease")
            }
        })
    }))
    .await;
    let mut seen = HashSet::new();
    for lease in leases.iter().flatten() {
        assert!(
            seen.insert(lease.meta.instance_id.clone()),
            "{} leased twice",
            lease.meta.instance_id
        );
        assert_eq!(lease.inbox.len(), 1);
    }
    assert_eq!(seen.len(), 60, "12 lessees of 7 take all 60");
    drop_tables(&table).await;
}

/// Commits that arrive together are written together (`postgres/batch.rs`), yet each gets
/// its own answer: the turns whose lease is held land whole, the others are refused with
/// `LeaseLost` and change nothing, one that PostgreSQL refuses fails alone; activity
/// results sent at once all arrive.
#[tokio::test]
async fn commits_and_results_sent_at_once_each_get_their_own_answer() {
    use trellis_proto::durabletask::history_event::EventType;
    use trellis_proto::durabletask::{
        ActivityRequest, ExecutionStartedEvent, TaskCompletedEvent, WorkflowInstance,
    };
    use trellis_workflow::events::event;
    use trellis_workflow::store::{ActivityTask, Message, TurnCommit};
    use trellis_workflow::{WorkflowError, now_ms};

    let table = fresh_table();
    let st = store(&table).await;
    let app = format!("batch-{}", ids::random());
    create_instances(&st, &app, 40).await;
    let now = now_ms();
    let leases = st
        .lease_workflows(&app, "me", now, now + 60_000, 40)
        .await
        .expect("lease");
    assert_eq!(leases.len(), 40);
    let commits = leases.iter().enumerate().map(|(n, lease)| {
        let mut commit = TurnCommit {
            app_id: app.clone(),
            instance_id: lease.meta.instance_id.clone(),
            append: vec![event(
                now,
                EventType::ExecutionStarted(ExecutionStartedEvent::default()),
            )],
            consumed: lease.inbox.iter().map(|i| i.id).collect(),
            activities: vec![ActivityTask {
                app_id: app.clone(),
                workflow_app_id: app.clone(),
                request: ActivityRequest {
                    name: "act".into(),
                    workflow_instance: Some(WorkflowInstance {
                        instance_id: lease.meta.instance_id.clone(),
                        execution_id: Some("e1".into()),
                    }),
                    ..ActivityRequest::default()
                },
            }],
            ..TurnCommit::default()
        };
        // Every third turn claims to be another sidecar's; turn 1 has a value PostgreSQL
        // refuses (a NUL in text), which fails its batch, so the others are written alone.
        let owner = if n % 3 == 0 { "someone-else" } else { "me" };
        if n == 1 {
            commit.update.custom_status = Some(Some("bad\0".into()));
        }
        let st = &st;
        async move { (n, st.commit_turn(owner, commit).await) }
    });
    for (n, result) in futures_util::future::join_all(commits).await {
        let id = &leases[n].meta.instance_id;
        let history = st.history(&app, id).await.expect("history");
        if n % 3 == 0 {
            assert_eq!(result, Err(WorkflowError::LeaseLost(id.clone())), "{id}");
            assert!(
                history.is_empty(),
                "{id}: a refused commit wrote {history:?}"
            );
        } else if n == 1 {
            assert!(
                matches!(&result, Err(WorkflowError::Backend(m)) if m.contains("postgresql")),
                "{id}: {result:?}"
            );
            assert!(
                history.is_empty(),
                "{id}: a failed commit wrote {history:?}"
            );
        } else {
            assert_eq!(result, Ok(()), "{id}");
            assert_eq!(history.len(), 1, "{id}");
        }
    }
    // The held turns queued an activity each; their results go at once, with results of
    // activities that are not queued (dropped, without failing the others).
    let activities = st
        .lease_activities(&app, "me", now, now + 60_000, 100)
        .await
        .expect("lease activities");
    assert_eq!(activities.len(), 25, "one per turn written");
    let result = |id: i64, instance: &str| {
        let message = Message {
            app_id: app.clone(),
            instance_id: instance.to_string(),
            execution_id: Some("e1".into()),
            event: event(now, EventType::TaskCompleted(TaskCompletedEvent::default())),
            visible_at: now,
        };
        let st = &st;
        async move { st.complete_activity(id, message).await }
    };
    let sent = activities
        .iter()
        .map(|a| {
            let instance = a
                .task
                .request
                .workflow_instance
                .as_ref()
                .map(|w| w.instance_id.clone());
            result(a.id, &instance.unwrap_or_default())
        })
        .chain((0..10).map(|n| result(1_000_000 + n, "i1")));
    for answer in futures_util::future::join_all(sent).await {
        assert_eq!(answer, Ok(()));
    }
    let ready = st
        .lease_workflows(&app, "me", now_ms(), now_ms() + 60_000, 100)
        .await
        .expect("lease again");
    assert_eq!(
        ready.len(),
        25,
        "each instance written has its result, and only one"
    );
    for lease in &ready {
        assert_eq!(lease.inbox.len(), 1, "{}", lease.meta.instance_id);
    }
    drop_tables(&table).await;
}

/// Lease renewal skips the instances another transaction holds (a commit giving its lease
/// up, a result landing) instead of waiting for them: one statement waiting over every
/// leased row would deadlock with a batch of commits holding some of them. The held one is
/// renewed by the next renewal.
#[tokio::test]
async fn renewal_skips_instances_another_transaction_holds() {
    use std::time::Duration;

    let table = fresh_table();
    let st = store(&table).await;
    let app = format!("renew-{}", ids::random());
    create_instances(&st, &app, 2).await;
    let now = trellis_workflow::now_ms();
    let leases = st
        .lease_workflows(&app, "me", now, now + 1_000, 2)
        .await
        .expect("lease");
    assert_eq!(leases.len(), 2);

    let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let running = tokio::spawn(connection);
    let lease_of = |id: &'static str| {
        let (client, table, app) = (&client, &table, &app);
        async move {
            let row = client
                .query_one(
                    &format!(
                        "SELECT lease_until FROM {table}_instances \
                         WHERE app_id = $1 AND instance_id = $2"
                    ),
                    &[app, &id],
                )
                .await
                .expect("read a lease");
            row.get::<_, i64>(0)
        }
    };
    client
        .batch_execute("BEGIN")
        .await
        .expect("begin the holder");
    client
        .execute(
            &format!(
                "UPDATE {table}_instances SET updated_at = updated_at \
                 WHERE app_id = $1 AND instance_id = 'i0'"
            ),
            &[&app],
        )
        .await
        .expect("hold i0");
    tokio::time::timeout(Duration::from_secs(10), st.renew(&app, "me", now + 60_000))
        .await
        .expect("renewal waited for a row another transaction holds")
        .expect("renew");
    assert_eq!(
        lease_of("i1").await,
        now + 60_000,
        "the free one is renewed"
    );
    assert_eq!(lease_of("i0").await, now + 1_000, "the held one is skipped");

    client.batch_execute("ROLLBACK").await.expect("let i0 go");
    st.renew(&app, "me", now + 90_000).await.expect("renew");
    assert_eq!(lease_of("i0").await, now + 90_000, "renewed once free");
    drop(client);
    let _ = running.await;
    drop_tables(&table).await;
}
