//! The embedded backend: Dapr's `state.sqlite` component, on a local SQLite file.
//!
//! Metadata (Dapr's names): `connectionString` (a file path, a `file:` URI, or `:memory:`),
//! `tableName` (default `state`), `metadataTableName` (default `metadata`), `timeout` (or
//! `timeoutInSeconds`; default 20 s), `cleanupInterval` (default 1 h; `<= 0` disables),
//! `busyTimeout` (default 2 s), `disableWAL` (default false). Trellis adds
//! `readConnections` (default 2): how many reader threads, each with its own connection,
//! and `inlineReadsBelow` (default `64Mi`; `0` turns it off): the database size up to which
//! gets read on the caller's thread.
//!
//! # How it works
//!
//! SQLite is a blocking library, so SQLite calls that may wait run on threads of their own:
//!
//! - One **writer thread** (`trellis_sqlite::writer`, the group-commit writer every
//!   embedded backend shares) owns the only writing connection. Writes arrive on a
//!   channel; the thread takes everything queued (up to [`MAX_BATCH`]), applies it in one
//!   `BEGIN IMMEDIATE` transaction, commits, and only then answers every caller. With
//!   `synchronous=FULL` the commit is an fsync, so a write acknowledged as `Ok` survives a
//!   crash of the process (and of the machine), and concurrent writers share that fsync
//!   (group commit). Each write is checked on its own: one ETag mismatch fails that write
//!   only; a transaction's operations run inside a savepoint so they apply all or none
//!   (`writer.rs` is the store's side of it).
//! - A few **reader threads** share a channel of reads and each drains whatever is queued
//!   into one read transaction, so many concurrent gets cost one wake-up (`reader.rs`).
//! - The exception: while the database is small, a get (or a bulk get of a few keys)
//!   reads on the caller's own thread, on a read-only connection of its own, sparing two
//!   thread wake-ups that cost more than the read; a file that small stays in the page
//!   cache, so the read does not wait for the disk there (`inline.rs`).
//! - For an in-memory database there is one connection, so the writer thread also serves
//!   the reads (queued in order with the writes).
//!
//! Separate processes may open the same file: WAL mode lets readers run beside the one
//! writer, the busy timeout makes writers of different processes take turns, and the ETag
//! counter lives in the database (read and advanced under the write lock), so ETags stay
//! unique across processes. An ETag is never reused, even after delete and re-create.
//!
//! Expired rows (`ttl`) are invisible to every read and write check at once and deleted by
//! the writer thread every `cleanupInterval`. (Dapr's component leaves that clean-up off
//! unless asked; Trellis runs it hourly by default so a default store does not grow
//! forever.)

mod config;
mod inline;
mod jobs;
mod reader;
mod schema;
mod writer;

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::oneshot;
use trellis_sqlite::writer::Options;

use self::config::Config;
use self::inline::InlineGets;
use self::jobs::{Job, Reply};
use self::reader::reader_loop;
use self::schema::{Sql, open_reader, open_writer};
use self::writer::StoreWriter;
use crate::query::{Query, QueryResponse};
use crate::{
    Capabilities, DeleteRequest, Item, Metadata, Operation, SetRequest, StateError, StateStore,
};

/// The most jobs one write transaction (or one read transaction) takes. Bounded so a
/// flood of writes still commits, and answers, in slices.
pub const MAX_BATCH: usize = 1024;
/// The longest the writer lingers for more writes to join a batch: when a batch is
/// smaller than the one before, the callers that commit answered are most likely about to
/// send their next write, and waiting a moment for them (a quarter of a commit, at most
/// this) lets them share the next fsync instead of each half of them paying for one.
const MAX_GATHER_WAIT: Duration = Duration::from_micros(500);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn db_err(e: rusqlite::Error) -> StateError {
    StateError::Backend(format!("sqlite: {e}"))
}

/// Dapr's `state.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    writes: mpsc::Sender<Job>,
    /// The reader threads' channel; for an in-memory database, the writer's.
    reads: mpsc::Sender<Job>,
    /// Gets on the caller's thread, while the database is small.
    inline: Option<InlineGets>,
    timeout: Duration,
    connection: String,
}

impl SqliteStore {
    /// Opens (creating when missing) the database and table that `metadata` names, and
    /// starts the writer and reader threads. They stop when the store is dropped, after
    /// finishing what was queued.
    pub async fn open(metadata: &Metadata) -> Result<Self, StateError> {
        let cfg = Config::from_metadata(metadata)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| StateError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: Config) -> Result<Self, StateError> {
        let sql = Arc::new(Sql::new(&cfg.table, &cfg.metadata_table));
        let conn = open_writer(&cfg, &sql)?;
        let in_memory = cfg.in_memory();
        let mut readers = Vec::new();
        if !in_memory {
            for _ in 0..cfg.readers {
                readers.push(open_reader(&cfg)?);
            }
        }
        let options = Options {
            max_jobs: MAX_BATCH,
            gather_wait: MAX_GATHER_WAIT,
            periodic: cfg.cleanup_interval,
            ..Options::new("trellis-sqlite-writer", cfg.busy_timeout)
        };
        let writes = trellis_sqlite::writer::start(conn, StoreWriter::new(sql.clone()), options)
            .map_err(|e| StateError::Backend(e.to_string()))?;
        let spawn_err =
            |e: std::io::Error| StateError::Backend(format!("cannot start sqlite thread: {e}"));
        let reads = if in_memory {
            writes.clone()
        } else {
            let (reads, read_rx) = mpsc::channel();
            let read_rx = Arc::new(Mutex::new(read_rx));
            for (i, conn) in readers.into_iter().enumerate() {
                let (sql, rx, busy) = (sql.clone(), read_rx.clone(), cfg.busy_timeout);
                std::thread::Builder::new()
                    .name(format!("trellis-sqlite-reader-{i}"))
                    .spawn(move || reader_loop(conn, sql, rx, busy))
                    .map_err(spawn_err)?;
            }
            reads
        };
        // After the writer: it made the tables the inline reader's statements name. (None
        // for an in-memory database.)
        let inline = InlineGets::open(&cfg, sql)?;
        tracing::debug!(
            table = cfg.table,
            readers = cfg.readers,
            in_memory,
            inline_below = cfg.inline_below,
            "sqlite state store: opened"
        );
        Ok(SqliteStore {
            writes,
            reads,
            inline,
            timeout: cfg.timeout,
            connection: cfg.connection,
        })
    }

    /// Queues a job; the answer comes through [`SqliteStore::wait`].
    fn send<T>(
        to: &mpsc::Sender<Job>,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, StateError>>, StateError> {
        let (tx, rx) = oneshot::channel();
        to.send(job(tx))
            .map_err(|_| StateError::Backend("sqlite state store is closed".into()))?;
        Ok(rx)
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, StateError>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(StateError::Backend(
                "sqlite state store thread stopped".into(),
            )),
            Err(_) => Err(StateError::Backend(format!(
                "sqlite operation on {:?} timed out after {:?}; a write may still be applied",
                self.connection, self.timeout
            ))),
        }
    }

    async fn call<T>(
        &self,
        to: &mpsc::Sender<Job>,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T, StateError> {
        let rx = Self::send(to, job)?;
        self.wait(rx).await
    }

    /// Reads `keys` inline when [`InlineGets`] may, on the reader threads otherwise (the
    /// keys are copied for them only then).
    async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Item>>, StateError> {
        if let Some(items) = self.inline.as_ref().and_then(|i| i.get(keys)) {
            return items;
        }
        let keys = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        self.call(&self.reads, |reply| Job::Get { keys, reply })
            .await
    }

    async fn write(&self, ops: Vec<Operation>, atomic: bool) -> Result<(), StateError> {
        self.call(&self.writes, |reply| Job::Write { ops, atomic, reply })
            .await
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            etag: true,
            transactional: true,
            query: true,
            ttl: true,
            actor: true,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let mut items = self.get_many(&[key]).await?;
        Ok(items.pop().flatten())
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        match self.get_many(keys).await {
            Ok(items) => keys
                .iter()
                .cloned()
                .zip(items.into_iter().map(Ok))
                .collect(),
            Err(e) => {
                let msg = e.to_string();
                keys.iter()
                    .map(|k| (k.clone(), Err(StateError::Backend(msg.clone()))))
                    .collect()
            }
        }
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.write(vec![Operation::Upsert(req)], false).await
    }

    /// Queues every save at once, so they usually share one commit.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        let mut first_error = None;
        let mut pending = Vec::with_capacity(reqs.len());
        for req in reqs {
            let job = |reply| Job::Write {
                ops: vec![Operation::Upsert(req)],
                atomic: false,
                reply,
            };
            match Self::send(&self.writes, job) {
                Ok(rx) => pending.push(rx),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for rx in pending {
            if let Err(e) = self.wait(rx).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.write(vec![Operation::Delete(req)], false).await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(ops, true).await
    }

    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        let (prefix, query) = (key_prefix.to_string(), Box::new(query.clone()));
        self.call(&self.reads, |reply| Job::Query {
            prefix,
            query,
            reply,
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.call(&self.reads, |reply| Job::Get {
            keys: Vec::new(),
            reply,
        })
        .await
        .map(drop)
    }
}
