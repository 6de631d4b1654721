//! The embedded SQLite store: the conformance suite on a file and in memory, several stores
//! (and processes) on one file, durability across kill -9, background TTL clean-up, and
//! the component metadata.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use trellis_state::sqlite::SqliteStore;
use trellis_state::{
    Capabilities, Concurrency, DeleteRequest, Item, Metadata, Operation, Query, QueryResponse,
    SetRequest, StateError, StateStore,
};

pub fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    Metadata::from_pairs(pairs.iter().copied())
}

async fn open(db: &Path, extra: &[(&str, &str)]) -> SqliteStore {
    let db = db.to_str().unwrap();
    let mut pairs = vec![("connectionString", db)];
    pairs.extend_from_slice(extra);
    SqliteStore::open(&metadata(&pairs)).await.unwrap()
}

/// A store on a new file in its own temporary directory, removed with the store.
#[derive(Debug)]
pub struct TempStore {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

pub async fn temp_store(extra: &[(&str, &str)]) -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("state.db"), extra).await;
    TempStore { store, _dir: dir }
}

#[async_trait]
impl StateStore for TempStore {
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        self.store.get(key).await
    }
    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        self.store.bulk_get(keys).await
    }
    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.store.set(req).await
    }
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        self.store.bulk_set(reqs).await
    }
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.store.delete(req).await
    }
    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        self.store.transact(ops).await
    }
    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        self.store.query(key_prefix, query).await
    }
    async fn ping(&self) -> Result<(), StateError> {
        self.store.ping().await
    }
}

// Gets read on the caller's thread here (the database stays small)...
mod conformance_file {
    trellis_state::conformance_tests!(async { super::temp_store(&[]).await });
}

// ...and on the reader threads here.
mod conformance_file_reader_threads {
    trellis_state::conformance_tests!(async {
        super::temp_store(&[("inlineReadsBelow", "0")]).await
    });
}

mod conformance_memory {
    trellis_state::conformance_tests!(async {
        trellis_state::sqlite::SqliteStore::open(&super::metadata(&[(
            "connectionString",
            ":memory:",
        )]))
        .await
        .unwrap()
    });
}

/// While the database is small a get reads on the caller's thread: its future is done on
/// its first poll, with no reader thread to wake. A bulk get of many keys still goes to the
/// reader threads, and gets the same answers.
#[tokio::test]
async fn a_get_of_a_small_database_is_answered_on_the_callers_thread() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let store = temp_store(&[]).await;
    store.set(SetRequest::new("k", "\"v\"")).await.unwrap();
    let mut get = std::pin::pin!(store.get("k"));
    let Poll::Ready(item) = get.as_mut().poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("the get waited for another thread");
    };
    assert_eq!(item.unwrap().unwrap().value.as_ref(), b"\"v\"");

    let keys: Vec<String> = (0..40)
        .map(|i| format!("k{i}"))
        .chain(["k".into()])
        .collect();
    let got = store.bulk_get(&keys).await;
    assert_eq!(got.len(), 41);
    assert!(got[..40].iter().all(|(_, r)| matches!(r, Ok(None))));
    assert!(matches!(&got[40], (k, Ok(Some(_))) if k == "k"));
}

fn with_etag(key: &str, value: &str, etag: &str) -> SetRequest {
    let mut req = SetRequest::new(key, value.to_string());
    req.etag = Some(etag.to_string());
    req
}

/// Adds one to the JSON number under `key` (a missing key counts as 0) with
/// read-modify-write, retrying on conflicts.
async fn increment(store: &dyn StateStore, key: &str) {
    loop {
        let req = match store.get(key).await.unwrap() {
            Some(item) => {
                let n: u64 = serde_json::from_slice(&item.value).unwrap();
                with_etag(key, &(n + 1).to_string(), &item.etag)
            }
            None => {
                let mut req = SetRequest::new(key, "1");
                req.concurrency = Concurrency::FirstWrite;
                req
            }
        };
        match store.set(req).await {
            Ok(()) => return,
            Err(StateError::EtagMismatch) => continue,
            Err(e) => panic!("increment {key}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (a, b) = (open(&db, &[]).await, open(&db, &[]).await);

    a.set(SetRequest::new("app||k", "\"from a\""))
        .await
        .unwrap();
    let seen = b.get("app||k").await.unwrap().unwrap();
    assert_eq!(&seen.value[..], b"\"from a\"");
    b.set(with_etag("app||k", "\"from b\"", &seen.etag))
        .await
        .unwrap();
    let now = a.get("app||k").await.unwrap().unwrap();
    assert_eq!(&now.value[..], b"\"from b\"");
    assert_ne!(now.etag, seen.etag);
    // a's copy of the old ETag is stale for a too.
    assert!(matches!(
        a.set(with_etag("app||k", "\"late\"", &seen.etag)).await,
        Err(StateError::EtagMismatch)
    ));
    b.transact(vec![
        Operation::Upsert(SetRequest::new("app||t1", "1")),
        Operation::Delete(DeleteRequest::new("app||k")),
    ])
    .await
    .unwrap();
    assert_eq!(a.get("app||k").await.unwrap(), None);
    assert!(a.get("app||t1").await.unwrap().is_some());

    // Both stores increment one counter: no update is lost, and ETags never collide.
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                increment(store.as_ref(), "app||n").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(&b.get("app||n").await.unwrap().unwrap().value[..], b"200");
}

/// Gets from several threads at once: some read inline, the ones that find the inline
/// connection taken go to the reader threads. Either way a get sees the write that was
/// acknowledged before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_from_many_threads_see_each_acknowledged_write() {
    let store = std::sync::Arc::new(temp_store(&[]).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("app||k{t}");
            for n in 0..100 {
                store
                    .set(SetRequest::new(&key, n.to_string()))
                    .await
                    .unwrap();
                let got = store.get(&key).await.unwrap().unwrap();
                assert_eq!(got.value, n.to_string().as_bytes(), "{key}");
                let both = store.bulk_get(&[key.clone(), "app||none".into()]).await;
                assert!(matches!(&both[0].1, Ok(Some(i)) if i.value == n.to_string().as_bytes()));
                assert!(matches!(both[1].1, Ok(None)));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn data_and_etags_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = open(&db, &[]).await;
    let mut etags = std::collections::BTreeSet::new();
    for i in 0..10 {
        store
            .set(SetRequest::new("k", format!("{i}")))
            .await
            .unwrap();
        etags.insert(store.get("k").await.unwrap().unwrap().etag);
    }
    drop(store);
    let store = open(&db, &[]).await;
    let item = store.get("k").await.unwrap().unwrap();
    assert_eq!(&item.value[..], b"9");
    store.set(SetRequest::new("k", "10")).await.unwrap();
    let etag = store.get("k").await.unwrap().unwrap().etag;
    assert!(!etags.contains(&etag), "etag {etag} was used before");
}

#[tokio::test]
async fn tables_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let a = open(&db, &[("tableName", "first")]).await;
    let b = open(&db, &[("tableName", "second")]).await;
    a.set(SetRequest::new("k", "1")).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
}

#[tokio::test]
async fn expired_rows_are_cleaned_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = open(&db, &[("cleanupInterval", "200ms")]).await;
    // More than one clean-up chunk (1000 rows).
    let reqs = (0..2500)
        .map(|i| {
            let mut req = SetRequest::new(format!("ttl{i}"), "1");
            req.ttl = Some(Duration::from_millis(300));
            req
        })
        .collect();
    store.bulk_set(reqs).await.unwrap();
    store.set(SetRequest::new("keep", "1")).await.unwrap();
    let rows = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT count(*) FROM state", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    assert_eq!(rows(), 2501);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rows() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired rows still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.get("keep").await.unwrap().is_some());
}

#[tokio::test]
async fn journal_mode_follows_disable_wal() {
    let dir = tempfile::tempdir().unwrap();
    for (disable, expected) in [("false", "wal"), ("true", "delete")] {
        let db = dir.path().join(format!("{disable}.db"));
        let store = open(&db, &[("disableWAL", disable)]).await;
        store.set(SetRequest::new("k", "1")).await.unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, expected);
        assert!(store.get("k").await.unwrap().is_some());
    }
}

#[tokio::test]
async fn creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a/b/c/state.db");
    let store = open(&db, &[]).await;
    store.set(SetRequest::new("k", "1")).await.unwrap();
    assert!(db.exists());
}

#[tokio::test]
async fn bad_metadata_and_foreign_tables_are_reported() {
    let err = SqliteStore::open(&metadata(&[])).await.unwrap_err();
    assert!(err.to_string().contains("connectionString"), "{err}");
    let err = SqliteStore::open(&metadata(&[
        ("connectionString", ":memory:"),
        ("tableName", "x; drop table y"),
    ]))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("tableName"), "{err}");

    // A table named like ours but laid out as Dapr's own component lays it out.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dapr.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE state (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL, \
             is_binary BOOLEAN NOT NULL, etag TEXT NOT NULL, expiration_time TIMESTAMP, \
             update_time TIMESTAMP)",
        )
        .unwrap();
    let err = SqliteStore::open(&metadata(&[("connectionString", db.to_str().unwrap())]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another layout"), "{err}");
}

// --- other processes --------------------------------------------------------------------

const CHILD_DB: &str = "TRELLIS_STATE_TEST_DB";

/// Runs this test binary again, as [`child_process`] in the given mode.
fn spawn_child(mode: &str, db: &Path) -> tokio::process::Child {
    trellis_test_support::respawn_test("sqlite::child_process", mode, &[(CHILD_DB, db.as_os_str())])
        .unwrap()
}

/// Not a test of its own: the body of the child processes the tests below start. Run
/// normally (without the environment variable), it does nothing.
#[test]
fn child_process() {
    let Some((mode, rt)) = trellis_test_support::child_mode() else {
        return;
    };
    let db = std::env::var(CHILD_DB).unwrap();
    rt.block_on(async move {
        let store = std::sync::Arc::new(open(Path::new(&db), &[]).await);
        let mut tasks = Vec::new();
        match mode.as_str() {
            // Writes until killed (or a minute passes), printing each key once its write
            // was acknowledged.
            "writer" => {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                for t in 0..16 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut i = 0u64;
                        while tokio::time::Instant::now() < deadline {
                            let key = format!("k{t}-{i}");
                            store
                                .set(SetRequest::new(&key, format!("{{\"i\":{i}}}")))
                                .await
                                .unwrap();
                            println!("acked {key}");
                            i += 1;
                        }
                    }));
                }
            }
            "counter" => {
                for _ in 0..4 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..50 {
                            increment(store.as_ref(), "counter").await;
                        }
                    }));
                }
            }
            other => panic!("unknown child mode {other}"),
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    const KILL_AFTER: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut child = spawn_child("writer", &db);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    // Lines keep coming after the kill until the pipe is drained: those writes were
    // acknowledged before the process died, so they count too.
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the child writes")
        .unwrap()
    {
        if let Some(key) = line.strip_prefix("acked ") {
            acked.push(key.to_string());
            if acked.len() == KILL_AFTER {
                child.start_kill().unwrap();
            }
        }
    }
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed mid-stream: {status}");
    assert!(acked.len() >= KILL_AFTER);

    let store = open(&db, &[]).await;
    let got = store.bulk_get(&acked).await;
    let mut missing = Vec::new();
    for (key, res) in got {
        match res.unwrap() {
            Some(item) => {
                let i = key.split('-').next_back().unwrap();
                assert_eq!(item.value, format!("{{\"i\":{i}}}").into_bytes());
            }
            None => missing.push(key),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    println!("{} acknowledged writes all survived kill -9", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_counter_without_lost_updates() {
    // Both start on a file that does not exist yet: both create the schema at once.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let mut children = [spawn_child("counter", &db), spawn_child("counter", &db)];
    for child in &mut children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
            .await
            .expect("child finishes")
            .unwrap();
        assert!(status.success(), "child failed: {status}");
    }
    let store = open(&db, &[]).await;
    let item = store.get("counter").await.unwrap().unwrap();
    assert_eq!(&item.value[..], b"400", "2 processes × 4 tasks × 50");
}
