//! The PostgreSQL backend against the server on 127.0.0.1:5432: the conformance suite on
//! both of Dapr's layouts, then what is particular to it (Dapr's tables, sharing a table with
//! Dapr, expired-row cleanup, failing fast and recovering across a server restart).

use std::time::Duration;

use trellis_state::postgres::PostgresStore;
use trellis_state::{Metadata, SetRequest, StateError, StateStore};

use crate::servers;

const CONN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=5";

fn md(pairs: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::default();
    m.insert("connectionString", CONN);
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

// The conformance cases namespace their keys, so they share one table per layout.
mod conformance_v1 {
    trellis_state::conformance_tests!(async {
        trellis_state::postgres::PostgresStore::open(&super::md(&[(
            "tableName",
            "trellis_it_conformance_v1",
        )]))
        .await
        .expect("open a postgresql v1 store")
    });
}

mod conformance_v2 {
    trellis_state::conformance_tests!(async {
        trellis_state::postgres::PostgresStore::open_v2(&super::md(&[(
            "tablePrefix",
            "trellis_it_conformance_v2_",
        )]))
        .await
        .expect("open a postgresql v2 store")
    }, lacks: [query]);
}

async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(CONN, tokio_postgres::NoTls)
        .await
        .expect("connect to postgresql");
    tokio::spawn(conn);
    client
}

/// Drops the test's tables when it ends, passed or not.
struct Tables(Vec<String>);

impl Drop for Tables {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.0.join(", "));
        let _ = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-qc",
                &sql,
            ])
            .output();
    }
}

#[tokio::test]
async fn v1_keeps_daprs_layout() {
    let table = servers::unique("trellis_it_v1");
    let meta = servers::unique("trellis_it_meta");
    let _drop = Tables(vec![table.clone(), meta.clone()]);
    let store = PostgresStore::open(&md(&[("tableName", &table), ("metadataTableName", &meta)]))
        .await
        .unwrap();
    assert!(store.capabilities().query);
    store
        .set(SetRequest::new("json", "{\"b\": 1,  \"a\": [true]}"))
        .await
        .unwrap();
    store
        .set(SetRequest::new("canonical", "{\"a\": 1}"))
        .await
        .unwrap();
    store
        .set(SetRequest::new("bin", vec![0xffu8, 0, 1]))
        .await
        .unwrap();

    let db = client().await;
    let rows = db
        .query(
            &format!(
                "SELECT key, value::text, isbinary, rawvalue IS NOT NULL FROM {table} ORDER BY key"
            ),
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        [
            // Dapr's v1 keeps non-JSON bytes as a JSON string of their base64.
            ("bin".into(), "\"/wAB\"".into(), true, false),
            // Already in jsonb's spelling: nothing kept beside it.
            ("canonical".into(), "{\"a\": 1}".into(), false, false),
            // The value is queryable JSONB; the text as written is kept for reads.
            (
                "json".into(),
                "{\"a\": [true], \"b\": 1}".into(),
                false,
                true
            ),
        ]
    );
    let level: String = db
        .query_one(
            &format!("SELECT value FROM {meta} WHERE key = 'migrations'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        level, "2",
        "dapr's migration level, so dapr does not migrate again"
    );
}

#[tokio::test]
async fn v2_keeps_daprs_layout() {
    let prefix = servers::unique("trellis_it_v2") + "_";
    let table = format!("{prefix}state");
    let _drop = Tables(vec![table.clone()]);
    let store = PostgresStore::open_v2(&md(&[("tablePrefix", &prefix)]))
        .await
        .unwrap();
    assert_eq!(store.table(), table);
    assert!(!store.capabilities().query);
    assert!(matches!(
        store
            .query("", &trellis_state::Query::default())
            .await
            .unwrap_err(),
        StateError::NotSupported(_)
    ));
    store
        .set(SetRequest::new("k", vec![0xffu8, 0]))
        .await
        .unwrap();
    let row = client()
        .await
        .query_one(&format!("SELECT value, etag::text FROM {table}"), &[])
        .await
        .unwrap();
    let (value, etag): (Vec<u8>, String) = (row.get(0), row.get(1));
    assert_eq!(value, [0xff, 0]);
    assert_eq!(store.get("k").await.unwrap().unwrap().etag, etag);
}

/// A table Dapr created, with rows Dapr wrote, then shared with Dapr sidecars that keep
/// writing: Trellis adds its columns, reads the rows, and Dapr's updates change the ETag.
#[tokio::test]
async fn v1_shares_a_table_with_dapr() {
    let table = servers::unique("trellis_it_dapr");
    let _drop = Tables(vec![table.clone()]);
    let db = client().await;
    // Dapr's v1 migrations 0 and 1.
    db.batch_execute(&format!(
        "CREATE TABLE {table} (key text NOT NULL PRIMARY KEY, value jsonb NOT NULL,
         isbinary boolean NOT NULL, insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
         updatedate TIMESTAMP WITH TIME ZONE NULL);
         ALTER TABLE {table} ADD expiredate TIMESTAMP WITH TIME ZONE;
         INSERT INTO {table} (key, value, isbinary) VALUES ('app||k', '{{\"n\": 1}}', false);"
    ))
    .await
    .unwrap();
    let store = PostgresStore::open(&md(&[("tableName", &table)]))
        .await
        .unwrap();
    let first = store.get("app||k").await.unwrap().unwrap();
    assert_eq!(&first.value[..], b"{\"n\": 1}");

    // Trellis writes non-canonical JSON, then a Dapr sidecar overwrites it.
    let mut req = SetRequest::new("app||k", "{\"n\":2}");
    req.etag = Some(first.etag.clone());
    store.set(req).await.unwrap();
    let ours = store.get("app||k").await.unwrap().unwrap();
    assert_eq!(&ours.value[..], b"{\"n\":2}");
    db.execute(
        &format!(
            "INSERT INTO {table} (key, value, isbinary) VALUES ('app||k', '{{\"n\": 3}}', false)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updatedate = now()"
        ),
        &[],
    )
    .await
    .unwrap();
    let theirs = store.get("app||k").await.unwrap().unwrap();
    assert_eq!(
        &theirs.value[..],
        b"{\"n\": 3}",
        "dapr's write is what reads see"
    );
    assert_ne!(theirs.etag, ours.etag, "dapr's write changed the etag");
    let mut stale = SetRequest::new("app||k", "4");
    stale.etag = Some(ours.etag);
    assert!(matches!(
        store.set(stale).await,
        Err(StateError::EtagMismatch)
    ));
}

#[tokio::test]
async fn expired_rows_are_cleaned_up() {
    let table = servers::unique("trellis_it_ttl");
    let meta = servers::unique("trellis_it_meta");
    let _drop = Tables(vec![table.clone(), meta.clone()]);
    let store = PostgresStore::open(&md(&[
        ("tableName", &table),
        ("metadataTableName", &meta),
        ("cleanupInterval", "1s"),
    ]))
    .await
    .unwrap();
    for i in 0..3 {
        let mut req = SetRequest::new(format!("short{i}"), "1");
        req.ttl = Some(Duration::from_millis(300));
        store.set(req).await.unwrap();
    }
    let mut long = SetRequest::new("long", "1");
    long.ttl = Some(Duration::from_secs(600));
    store.set(long).await.unwrap();
    store.set(SetRequest::new("forever", "1")).await.unwrap();

    let db = client().await;
    assert_eq!(count(&db, &table).await, 5);
    // The background task (every second) removes the three short-lived rows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&db, &table).await != 2 {
        assert!(std::time::Instant::now() < deadline, "expired rows remain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    assert!(
        store
            .get("long")
            .await
            .unwrap()
            .unwrap()
            .expires_at
            .is_some()
    );
}

async fn count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn unreachable_server_fails_fast_with_the_drivers_error() {
    let started = std::time::Instant::now();
    let err = PostgresStore::open(&md(&[(
        "connectionString",
        "host=127.0.0.1 port=1 user=postgres dbname=test",
    )]))
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        StateError::Backend(text) => assert!(text.contains("connect"), "{text}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_metadata_is_refused() {
    for pairs in [
        vec![("tableName", "state; drop table x")],
        vec![("connectionString", "host=127.0.0.1 sslmode=verify-full")],
        vec![("timeout", "100ms")],
    ] {
        let err = PostgresStore::open(&md(&pairs)).await.unwrap_err();
        assert!(
            matches!(err, StateError::InvalidRequest(_)),
            "{pairs:?}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_recovers_without_reopening() {
    servers::require_nextest("postgres_restart_recovers_without_reopening");
    let table = servers::unique("trellis_it_restart");
    let _drop = Tables(vec![table.clone()]);
    let store = PostgresStore::open(&md(&[("tableName", &table), ("timeout", "3s")]))
        .await
        .unwrap();
    servers::check_restart_recovery(servers::POSTGRES, &store, "k", Duration::from_secs(3), true)
        .await;
}

#[tokio::test]
async fn bulk_get_answers_a_key_asked_twice() {
    let store = PostgresStore::open(&md(&[("tableName", "trellis_it_conformance_v1")]))
        .await
        .unwrap();
    servers::check_bulk_get_duplicates(&store, &servers::unique("trellis-it-dup")).await;
}
