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
    use trellis_workflow::events::Start;
    use trellis_workflow::store::NewInstance;

    let table = fresh_table();
    let stores = [
        store(&table).await,
        store(&table).await,
        store(&table).await,
    ];
    let app = format!("split-{}", ids::random());
    for n in 0..60 {
        stores[0]
            .create(NewInstance {
                app_id: app.clone(),
                start: Start {
                    name: "wf".into(),
                    instance_id: format!("i{n}"),
                    execution_id: "e".into(),
                    ..Start::default()
                },
                parent_app_id: None,
            })
            .await
            .expect("create");
    }
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
