//! The configuration stores against the conformance suite, each on its real server (Redis
//! and PostgreSQL on loopback) or a fresh file, seeded the backend's own way over a
//! connection of its own, and what each says about bad settings, about what other clients
//! stored, and about a backend that goes away under its subscribers (`restart.rs`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use trellis_configuration::conformance::{Seed, Setup};
use trellis_configuration::redis::RedisConfigurationStore;
use trellis_configuration::sqlite::SqliteConfigurationStore;
use trellis_configuration::{ConfigurationError, ConfigurationStore, Item, Metadata};

mod postgres;
mod restart;

#[async_trait]
impl Seed for SqliteSeed {
    async fn set(&self, key: &str, value: &str) {
        self.0.set(key, value, &BTreeMap::new()).await.unwrap();
    }

    async fn delete(&self, key: &str) {
        self.0.delete(key).await.unwrap();
    }
}

/// A store written through (the same one, or another on the same file), and the
/// directory that holds the file.
struct SqliteSeed(
    Arc<SqliteConfigurationStore>,
    #[allow(dead_code)] Option<Arc<tempfile::TempDir>>,
);

/// A store of its own in memory, seeded through itself (changes heard in process).
async fn sqlite_memory_store() -> Setup {
    let md = Metadata::from_pairs([("connectionString", ":memory:")]);
    let store = Arc::new(SqliteConfigurationStore::open(&md).await.unwrap());
    Setup {
        store: store.clone(),
        seed: Arc::new(SqliteSeed(store, None)),
    }
}

/// A store on a fresh file, seeded through a second store on that file: as another
/// process (`trellis config set`) would write it, heard through the poller.
async fn sqlite_file_store() -> Setup {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.path().join("configuration.db").display().to_string(),
    )]);
    let store = Arc::new(SqliteConfigurationStore::open(&md).await.unwrap());
    let writer = Arc::new(SqliteConfigurationStore::open(&md).await.unwrap());
    Setup {
        store,
        seed: Arc::new(SqliteSeed(writer, Some(dir))),
    }
}

/// How long the test's keys live, so that runs do not pile up in the shared Redis.
const TTL_SECONDS: u64 = 600;

/// Writes `value||n` as an operator would, `n` counting up per key.
struct RedisSeed(redis::aio::MultiplexedConnection);

#[async_trait]
impl Seed for RedisSeed {
    async fn set(&self, key: &str, value: &str) {
        let mut conn = self.0.clone();
        let counter = format!("trellis-configuration-test||version||{key}");
        let (version,): (i64,) = redis::pipe()
            .incr(&counter, 1)
            .expire(&counter, TTL_SECONDS as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(format!("{value}||{version}"))
            .arg("EX")
            .arg(TTL_SECONDS)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    async fn delete(&self, key: &str) {
        let mut conn = self.0.clone();
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn redis_store() -> Setup {
    let md = Metadata::from_pairs([("redisHost", "127.0.0.1:6379")]);
    Setup {
        store: Arc::new(RedisConfigurationStore::open(&md).await.unwrap()),
        seed: Arc::new(RedisSeed(redis_conn().await)),
    }
}

mod sqlite_memory_conformance {
    trellis_configuration::conformance_tests!(super::sqlite_memory_store());
}

mod sqlite_file_conformance {
    trellis_configuration::conformance_tests!(super::sqlite_file_store());
}

mod redis_conformance {
    trellis_configuration::conformance_tests!(super::redis_store());
}

/// Dapr's format as another client writes it: a version is optional, keys of other types
/// are not items.
#[tokio::test]
async fn redis_reads_what_other_clients_wrote() {
    let mut conn = redis_conn().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (plain, versioned, hash) = (
        format!("cfg-plain-{id}"),
        format!("cfg-versioned-{id}"),
        format!("cfg-hash-{id}"),
    );
    let _: () = redis::pipe()
        .set_ex(&plain, "just a value", TTL_SECONDS)
        .set_ex(&versioned, "10||v7", TTL_SECONDS)
        .hset(&hash, "f", "v")
        .expire(&hash, TTL_SECONDS as i64)
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = redis_store().await.store;
    let got = store
        .get(
            &[plain.clone(), versioned.clone(), hash.clone()],
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    assert_eq!(got.get(&plain), Some(&Item::new("just a value", "")));
    assert_eq!(got.get(&versioned), Some(&Item::new("10", "v7")));
    assert!(!got.contains_key(&hash), "{got:?}");
    let all = store.get(&[], &BTreeMap::new()).await.unwrap();
    assert!(all.contains_key(&versioned) && !all.contains_key(&hash));
}

/// Versions grow across keys, deletions and processes sharing the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_versions_grow_across_keys_and_processes() {
    let dir = tempfile::tempdir().unwrap();
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.path().join("configuration.db").display().to_string(),
    )]);
    let a = SqliteConfigurationStore::open(&md).await.unwrap();
    let b = SqliteConfigurationStore::open(&md).await.unwrap();
    let none = BTreeMap::new();
    let v1 = a.set("x", "1", &none).await.unwrap();
    assert!(a.delete("x").await.unwrap());
    assert!(!a.delete("x").await.unwrap());
    let meta = BTreeMap::from([("owner".to_string(), "ops".to_string())]);
    let v2 = b.set("x", "2", &meta).await.unwrap();
    let v3 = b.set("y", "3", &none).await.unwrap();
    assert!(v1 < v2 && v2 < v3, "{v1} < {v2} < {v3}");
    let got = a.get(&[], &none).await.unwrap();
    assert_eq!(got["x"].value, "2");
    assert_eq!(got["x"].version, v2.to_string());
    assert_eq!(got["x"].metadata, meta);
    assert_eq!(got["y"].version, v3.to_string());
}

#[tokio::test]
async fn bad_settings_are_clear_errors() {
    let err = SqliteConfigurationStore::open(&Metadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connectionString"), "{err}");
    let md = Metadata::from_pairs([("connectionString", ":memory:"), ("tableName", "x; drop")]);
    let err = SqliteConfigurationStore::open(&md).await.unwrap_err();
    assert!(
        matches!(&err, ConfigurationError::InvalidRequest(m) if m.contains("tableName")),
        "{err}"
    );
    let err = RedisConfigurationStore::open(&Metadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redisHost"), "{err}");
}
