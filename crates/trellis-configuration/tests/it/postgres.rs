//! `configuration.postgresql` on the PostgreSQL server on loopback: the conformance suite
//! over a table with the trigger docs/configuration-stores.md shows, the channel named by
//! the request as Dapr's clients name it, and the errors of a store that cannot work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::NoTls;
use trellis_configuration::conformance::{Seed, Setup};
use trellis_configuration::postgres::PostgresConfigurationStore;
use trellis_configuration::{ConfigurationError, ConfigurationStore, Metadata};

pub const URL: &str = "host=127.0.0.1 user=postgres dbname=test";

pub async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(URL, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Dapr's table and the trigger of docs/configuration-stores.md, notifying `channel`.
pub async fn create_table(table: &str, channel: &str) {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} (
             KEY VARCHAR NOT NULL, VALUE VARCHAR NOT NULL, VERSION VARCHAR NOT NULL, METADATA JSON
         );
         CREATE OR REPLACE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
         DECLARE
             data json;
             notification json;
         BEGIN
             IF (TG_OP = 'DELETE') THEN
                 data = row_to_json(OLD);
             ELSE
                 data = row_to_json(NEW);
             END IF;
             notification = json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', data);
             PERFORM pg_notify('{channel}', notification::text);
             RETURN NULL;
         END;
         $$ LANGUAGE plpgsql;
         CREATE OR REPLACE TRIGGER {table}_changed
             AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE PROCEDURE {table}_notify();"
    );
    let mut c = client().await;
    trellis_core::postgres::create_under_lock(&mut c, "trellis-configuration-test", &sql)
        .await
        .unwrap();
}

/// Writes rows as an operator would: one row per key, the version counting up.
pub struct PgSeed {
    pub client: tokio_postgres::Client,
    pub table: String,
}

#[async_trait]
impl Seed for PgSeed {
    async fn set(&self, key: &str, value: &str) {
        let sql = format!(
            "WITH old AS (DELETE FROM {t} WHERE key = $1 RETURNING version)
             INSERT INTO {t} (key, value, version, metadata)
             SELECT $1, $2, (COALESCE((SELECT max(version::bigint) FROM old), 0) + 1)::text,
                    '{{\"source\": \"seed\"}}'::json",
            t = self.table
        );
        self.client.execute(&sql, &[&key, &value]).await.unwrap();
    }

    async fn delete(&self, key: &str) {
        let sql = format!("DELETE FROM {} WHERE key = $1", self.table);
        self.client.execute(&sql, &[&key]).await.unwrap();
    }
}

/// The shared conformance table; its channel named in the component's metadata.
const TABLE: &str = "trellis_conformance_configuration";

async fn store_with(
    pairs: &[(&str, &str)],
) -> Result<PostgresConfigurationStore, ConfigurationError> {
    let mut md = vec![("connectionString", URL), ("table", TABLE)];
    md.extend_from_slice(pairs);
    PostgresConfigurationStore::open(&Metadata::from_pairs(md)).await
}

pub async fn postgres_store() -> Setup {
    create_table(TABLE, TABLE).await;
    Setup {
        store: Arc::new(store_with(&[("notifyChannel", TABLE)]).await.unwrap()),
        seed: Arc::new(PgSeed {
            client: client().await,
            table: TABLE.to_string(),
        }),
    }
}

mod postgres_conformance {
    trellis_configuration::conformance_tests!(super::postgres_store());
}

/// Dapr's clients name the channel in the subscribe request (`pgNotifyChannel`); a trigger
/// that sends no row still makes subscribers read their keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_names_the_channel_and_any_payload_is_heard() {
    let table = trellis_test_support::servers::unique("cfg");
    let channel = format!("{table}_chan");
    create_table(&table, &channel).await;
    let md = Metadata::from_pairs([("connectionString", URL), ("table", table.as_str())]);
    let store = PostgresConfigurationStore::open(&md).await.unwrap();
    let err = store.subscribe(&[], &BTreeMap::new()).await.unwrap_err();
    assert!(
        matches!(&err, ConfigurationError::InvalidRequest(m) if m.contains("pgNotifyChannel")),
        "{err}"
    );
    let request = BTreeMap::from([("pgNotifyChannel".to_string(), channel.clone())]);
    let mut sub = store.subscribe(&["k".into()], &request).await.unwrap();
    let c = client().await;
    // Rows written with the trigger off, then a bare NOTIFY: read afresh all the same.
    c.batch_execute(&format!(
        "ALTER TABLE {table} DISABLE TRIGGER {table}_changed;
         INSERT INTO {table} VALUES ('k', 'v', '1', NULL), ('k', 'v2', '2', '{{\"a\":\"b\"}}');
         NOTIFY \"{channel}\";"
    ))
    .await
    .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(update["k"].value, "v2", "the highest version wins");
    assert_eq!(update["k"].metadata["a"], "b");
    let all = store.get(&[], &BTreeMap::new()).await.unwrap();
    assert_eq!(all.len(), 1);
    c.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn a_missing_table_or_bad_names_are_clear_errors() {
    let open = |pairs: Vec<(&'static str, String)>| async move {
        PostgresConfigurationStore::open(&Metadata::from_pairs(pairs))
            .await
            .unwrap_err()
    };
    let missing = trellis_test_support::servers::unique("nothere");
    let err = open(vec![
        ("connectionString", URL.into()),
        ("table", missing.clone()),
    ])
    .await;
    assert!(err.to_string().contains("does not exist"), "{err}");
    let err = open(vec![
        ("connectionString", URL.into()),
        ("table", "Bad; drop".into()),
    ])
    .await;
    assert!(err.to_string().contains("table"), "{err}");
    let err = open(vec![("connectionString", URL.into())]).await;
    assert!(err.to_string().contains("table"), "{err}");
    let err = open(vec![
        ("connectionString", URL.into()),
        ("table", TABLE.into()),
        ("notifyChannel", "No Spaces".into()),
    ])
    .await;
    assert!(err.to_string().contains("notifyChannel"), "{err}");
}
