//! The lock stores against the conformance suite, each on its real server (PostgreSQL and
//! Redis on loopback) or a fresh file, and what each says about bad settings.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use trellis_lock::conformance::Setup;
use trellis_lock::postgres::PostgresLockStore;
use trellis_lock::redis::RedisLockStore;
use trellis_lock::sqlite::SqliteLockStore;
use trellis_lock::{LockError, LockStore, Metadata, TryLock};

/// A store of its own in memory (sharing a file between stores, as processes do, is
/// [`two_sqlite_stores_on_one_file_exclude_each_other`]).
async fn sqlite_store() -> Setup {
    let md = Metadata::from_pairs([("connectionString", ":memory:")]);
    Setup {
        store: Arc::new(SqliteLockStore::open(&md).await.unwrap()),
    }
}

async fn redis_store() -> Setup {
    let md = Metadata::from_pairs([
        ("redisHost", "127.0.0.1:6379"),
        ("fencingTokenKey", "trellis-lock-test||fencing"),
    ]);
    Setup {
        store: Arc::new(RedisLockStore::open(&md).await.unwrap()),
    }
}

const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

async fn postgres_store() -> Setup {
    let md = Metadata::from_pairs([
        ("connectionString", PG),
        ("tableName", "trellis_lock_conformance"),
    ]);
    Setup {
        store: Arc::new(PostgresLockStore::open(&md).await.unwrap()),
    }
}

mod sqlite_conformance {
    trellis_lock::conformance_tests!(super::sqlite_store());
}

mod redis_conformance {
    trellis_lock::conformance_tests!(super::redis_store());
}

mod postgres_conformance {
    trellis_lock::conformance_tests!(super::postgres_store());
}

/// Two stores over one file stand for two processes: each has its own writer, and the
/// file alone decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sqlite_stores_on_one_file_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let md = Metadata::from_pairs([(
        "connectionString",
        dir.path().join("lock.db").display().to_string(),
    )]);
    let a = SqliteLockStore::open(&md).await.unwrap();
    let b = SqliteLockStore::open(&md).await.unwrap();
    let long = Duration::from_secs(60);
    let TryLock::Acquired { fencing_token: t1 } = a.try_lock("r", "a", long).await.unwrap() else {
        panic!("a should acquire");
    };
    assert_eq!(b.try_lock("r", "b", long).await.unwrap(), TryLock::Held);
    a.unlock("r", "a").await.unwrap();
    let TryLock::Acquired { fencing_token: t2 } = b.try_lock("r", "b", long).await.unwrap() else {
        panic!("b should acquire");
    };
    assert!(t2 > t1, "tokens grow across processes: {t2} > {t1}");
}

#[tokio::test]
async fn bad_settings_are_clear_errors() {
    let err = SqliteLockStore::open(&Metadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connectionString"), "{err}");
    let md = Metadata::from_pairs([("connectionString", ":memory:"), ("tableName", "x; drop")]);
    let err = SqliteLockStore::open(&md).await.unwrap_err();
    assert!(
        matches!(&err, LockError::InvalidRequest(m) if m.contains("tableName")),
        "{err}"
    );
    let md = Metadata::from_pairs([("connectionString", PG), ("tableName", "a b")]);
    let err = PostgresLockStore::open(&md).await.unwrap_err();
    assert!(err.to_string().contains("tableName"), "{err}");
    let err = RedisLockStore::open(&Metadata::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redisHost"), "{err}");
}
