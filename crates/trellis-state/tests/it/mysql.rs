//! The MySQL backend against the MariaDB server on 127.0.0.1:3306: the conformance suite,
//! then what is particular to it (Dapr's Go DSN, Dapr's table, expired-row cleanup, failing
//! fast and recovering across a server restart).

use std::time::Duration;

use mysql_async::prelude::Queryable;
use trellis_state::mysql::MysqlStore;
use trellis_state::{Metadata, SetRequest, StateError, StateStore};

use crate::servers;

/// Dapr's documented form of the connection string.
const DSN: &str = "root:@tcp(127.0.0.1:3306)/?allowNativePasswords=true";

fn md(pairs: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::default();
    m.insert("connectionString", DSN);
    m.insert("schemaName", "test");
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

// The conformance cases namespace their keys, so they share one table.
mod conformance {
    trellis_state::conformance_tests!(async {
        trellis_state::mysql::MysqlStore::open(&super::md(&[(
            "tableName",
            "trellis_it_conformance",
        )]))
        .await
        .expect("open a mysql store")
    }, lacks: [query]);
}

async fn conn() -> mysql_async::Conn {
    mysql_async::Conn::from_url("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("connect to mariadb")
}

/// Drops the test's tables when it ends, passed or not.
struct Tables(Vec<String>);

impl Drop for Tables {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.0.join(", "));
        let _ = std::process::Command::new("mysql")
            .args(["-h127.0.0.1", "-uroot", "test", "-e", &sql])
            .output();
    }
}

#[tokio::test]
async fn keeps_daprs_layout() {
    let table = servers::unique("trellis_it_layout");
    let _drop = Tables(vec![table.clone()]);
    let store = MysqlStore::open(&md(&[("tableName", &table)]))
        .await
        .unwrap();
    assert!(!store.capabilities().query);
    store
        .set(SetRequest::new("json", "{\"b\": 1,  \"a\": [true]}"))
        .await
        .unwrap();
    store
        .set(SetRequest::new("bin", vec![0xffu8, 0, 1]))
        .await
        .unwrap();
    let mut c = conn().await;
    let rows: Vec<(String, String, bool, String)> = c
        .query(format!(
            "SELECT id, value, isbinary, eTag FROM {table} ORDER BY id"
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2),
        ("bin", "\"/wAB\"", true),
        "dapr keeps non-json bytes as a json string of their base64"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].2),
        ("json", "{\"b\": 1,  \"a\": [true]}", false)
    );
    let etag = store.get("json").await.unwrap().unwrap().etag;
    assert_eq!(rows[1].3, etag);
    assert!(
        uuid::Uuid::try_parse(&etag).is_ok(),
        "etags are uuids, as dapr's"
    );
}

/// A table Dapr created (its own DDL, no `contentType`, second-precision expiry) with a row
/// Dapr wrote: Trellis adds its column and reads and writes the row.
#[tokio::test]
async fn opens_a_table_dapr_created() {
    let table = servers::unique("trellis_it_dapr");
    let _drop = Tables(vec![table.clone()]);
    let mut c = conn().await;
    c.query_drop(format!(
        "CREATE TABLE {table} (id VARCHAR(255) NOT NULL PRIMARY KEY, value JSON NOT NULL,
         isbinary BOOLEAN NOT NULL, insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
         updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
         eTag VARCHAR(36) NOT NULL, expiredate TIMESTAMP NULL, INDEX expiredate_idx(expiredate));
         INSERT INTO {table} (id, value, isbinary, eTag)
         VALUES ('app||k', '{{\"n\":1}}', false, '2d5f1ba6-1f4c-4a4b-9a0e-3c1f2f8f9a11')"
    ))
    .await
    .unwrap();
    let store = MysqlStore::open(&md(&[("tableName", &table)]))
        .await
        .unwrap();
    let item = store.get("app||k").await.unwrap().unwrap();
    assert_eq!(&item.value[..], b"{\"n\":1}");
    assert_eq!(item.etag, "2d5f1ba6-1f4c-4a4b-9a0e-3c1f2f8f9a11");
    let mut req = SetRequest::new("app||k", "{\"n\":2}");
    req.etag = Some(item.etag);
    req.ttl = Some(Duration::from_secs(60));
    req.content_type = Some("application/json".into());
    store.set(req).await.unwrap();
    let item = store.get("app||k").await.unwrap().unwrap();
    assert_eq!(&item.value[..], b"{\"n\":2}");
    assert!(item.expires_at.is_some());
    assert_eq!(item.content_type.as_deref(), Some("application/json"));
}

#[tokio::test]
async fn expired_rows_are_cleaned_up() {
    let table = servers::unique("trellis_it_ttl");
    let _drop = Tables(vec![table.clone()]);
    let store = MysqlStore::open(&md(&[("tableName", &table), ("cleanupInterval", "1s")]))
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
    let mut c = conn().await;
    let count_sql = format!("SELECT COUNT(*) FROM {table}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: Option<i64> = c.query_first(&count_sql).await.unwrap();
        if n == Some(2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired rows remain: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
}

#[tokio::test]
async fn unreachable_server_fails_fast_with_the_drivers_error() {
    let started = std::time::Instant::now();
    let err = MysqlStore::open(&md(&[("connectionString", "root@tcp(127.0.0.1:1)/")]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        StateError::Backend(text) => assert!(!text.is_empty()),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn url_connection_strings_work_too() {
    let table = servers::unique("trellis_it_url");
    let _drop = Tables(vec![table.clone()]);
    let store = MysqlStore::open(&md(&[
        ("connectionString", "mysql://root@127.0.0.1:3306/"),
        ("tableName", &table),
    ]))
    .await
    .unwrap();
    store.set(SetRequest::new("k", "1")).await.unwrap();
    assert!(store.get("k").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_restart_recovers_without_reopening() {
    servers::require_nextest("mysql_restart_recovers_without_reopening");
    let table = servers::unique("trellis_it_restart");
    let _drop = Tables(vec![table.clone()]);
    let store = MysqlStore::open(&md(&[("tableName", &table), ("timeoutInSeconds", "3")]))
        .await
        .unwrap();
    servers::check_restart_recovery(servers::MARIADB, &store, "k", Duration::from_secs(3), true)
        .await;
}

#[tokio::test]
async fn bulk_get_answers_a_key_asked_twice() {
    let store = MysqlStore::open(&md(&[("tableName", "trellis_it_conformance")]))
        .await
        .unwrap();
    servers::check_bulk_get_duplicates(&store, &servers::unique("trellis-it-dup")).await;
}

/// Expiry times come out right however often a pooled connection is reused (and reset).
#[tokio::test]
async fn expiry_times_are_right_on_reused_connections() {
    let table = servers::unique("trellis_it_session");
    let _drop = Tables(vec![table.clone()]);
    let store = MysqlStore::open(&md(&[("tableName", &table)]))
        .await
        .unwrap();
    for i in 0..5 {
        let mut req = SetRequest::new("k", format!("{i}"));
        req.ttl = Some(Duration::from_secs(3600));
        store.set(req).await.unwrap();
        let item = store.get("k").await.unwrap().unwrap();
        let expires = item.expires_at.unwrap();
        let from_now = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(
            from_now > Duration::from_secs(3590) && from_now <= Duration::from_secs(3600),
            "round {i}: expires in {from_now:?}"
        );
    }
}
