//! Subscribers whose backend goes away: each reconnects by itself and then gets, as a fresh
//! read of its keys, the changes it could not hear while away (and only those).
//!
//! Names with `_restart_` run alone under nextest (`.config/nextest.toml`): the PostgreSQL
//! one restarts the server every other test uses.

use std::collections::BTreeMap;
use std::time::Duration;

use trellis_configuration::postgres::PostgresConfigurationStore;
use trellis_configuration::redis::RedisConfigurationStore;
use trellis_configuration::{ConfigurationStore, Item, Metadata, Subscription};
use trellis_test_support::servers::{self, OwnRedis};

use crate::postgres::{URL, client, create_table};

const PATIENCE: Duration = Duration::from_secs(30);

async fn next_of(sub: &mut Subscription, key: &str) -> Item {
    trellis_configuration::conformance::next_change(sub, key, PATIENCE).await
}

/// A Redis of the test's own is killed and started again, empty: the subscriber hears of
/// no deletion, yet learns of it from its fresh read, and hears later changes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_subscriber_reads_what_it_missed() {
    let mut redis = OwnRedis::start(trellis_test_support::free_port());
    let host = format!("127.0.0.1:{}", redis.port);
    let store =
        RedisConfigurationStore::open(&Metadata::from_pairs([("redisHost", host.as_str())]))
            .await
            .unwrap();
    let conn = || async {
        redis::Client::open(format!("redis://{host}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let mut c = conn().await;
    let _: () = redis::cmd("SET")
        .arg("a")
        .arg("1||1")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut sub = store
        .subscribe(&["a".into(), "b".into()], &BTreeMap::new())
        .await
        .unwrap();
    redis.kill();
    redis.restart();
    assert_eq!(next_of(&mut sub, "a").await, Item::default());
    let mut c = conn().await;
    let _: () = redis::cmd("SET")
        .arg("b")
        .arg("2||5")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(next_of(&mut sub, "b").await, Item::new("2", "5"));
}

/// A change the trigger did not announce, made before the listening connection is lost, is
/// delivered by the read that follows the reconnection.
async fn check_reconnection(lose_connection: impl AsyncFnOnce(&str)) {
    let table = servers::unique("cfgrestart");
    create_table(&table, &table).await;
    let md = Metadata::from_pairs([
        ("connectionString", URL),
        ("table", table.as_str()),
        ("notifyChannel", table.as_str()),
    ]);
    let store = PostgresConfigurationStore::open(&md).await.unwrap();
    let mut sub = store
        .subscribe(&["k".into()], &BTreeMap::new())
        .await
        .unwrap();
    let c = client().await;
    c.batch_execute(&format!(
        "ALTER TABLE {table} DISABLE TRIGGER {table}_changed;
         INSERT INTO {table} VALUES ('k', 'unannounced', '1', NULL);
         ALTER TABLE {table} ENABLE TRIGGER {table}_changed;"
    ))
    .await
    .unwrap();
    drop(c);
    lose_connection(&table).await;
    assert_eq!(next_of(&mut sub, "k").await, Item::new("unannounced", "1"));
    // And the trigger is heard again.
    let c = client().await;
    c.execute(
        &format!("UPDATE {table} SET value = 'announced', version = '2'"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_of(&mut sub, "k").await.value, "announced");
    c.batch_execute(&format!(
        "DROP TABLE {table}; DROP FUNCTION {table}_notify()"
    ))
    .await
    .unwrap();
}

/// The listening backend is terminated by an administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lost_listener_reads_what_it_missed() {
    check_reconnection(async |channel: &str| {
        let c = client().await;
        let listen = format!("LISTEN \"{channel}\"");
        let n = c
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1",
                &[&listen],
            )
            .await
            .unwrap();
        assert_eq!(n, 1, "one listening connection");
    })
    .await;
}

/// The server restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_subscriber_reads_what_it_missed() {
    servers::require_nextest("postgres_restart_subscriber_reads_what_it_missed");
    check_reconnection(async |_: &str| {
        let mut stopped = tokio::task::spawn_blocking(|| servers::POSTGRES.stop())
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || stopped.start())
            .await
            .unwrap();
    })
    .await;
}
