//! The embedded backend: Dapr's `state.sqlite` component, on a local SQLite file.
//!
//! Metadata (Dapr's names): `connectionString` (a file path, a `file:` URI, or `:memory:`),
//! `tableName` (default `state`), `metadataTableName` (default `metadata`), `timeout` (or
//! `timeoutInSeconds`; default 20 s), `cleanupInterval` (default 1 h; `<= 0` disables),
//! `busyTimeout` (default 2 s), `disableWAL` (default false). Trellis adds
//! `readConnections` (default 2): how many reader threads, each with its own connection.
//!
//! # How it works
//!
//! SQLite is a blocking library, so no SQLite call ever runs on a tokio thread:
//!
//! - One **writer thread** owns the only writing connection. Writes arrive on a channel;
//!   the thread takes everything queued (up to [`MAX_BATCH`]), applies it in one
//!   `BEGIN IMMEDIATE` transaction, commits, and only then answers every caller. With
//!   `synchronous=FULL` the commit is an fsync, so a write acknowledged as `Ok` survives a
//!   crash of the process (and of the machine), and concurrent writers share that fsync
//!   (group commit). Each write is checked on its own: one ETag mismatch fails that write
//!   only; a transaction's operations run inside a savepoint so they apply all or none.
//! - A few **reader threads** share a channel of reads and each drains whatever is queued
//!   into one read transaction, so many concurrent gets cost one wake-up.
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

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::query::{Query, QueryResponse, QueryResult, compare};
use crate::{
    Capabilities, Concurrency, DeleteRequest, Item, Metadata, Operation, SetRequest, StateError,
    StateStore,
};

/// The most jobs one write transaction (or one read transaction) takes. Bounded so a
/// flood of writes still commits, and answers, in slices.
pub const MAX_BATCH: usize = 1024;
/// The longest the writer waits for more writes to join a batch; see [`gather`].
const MAX_GATHER_WAIT: Duration = Duration::from_micros(500);
/// Rows deleted per transaction by the TTL clean-up, so it never holds the write lock long.
const CLEANUP_CHUNK: usize = 1000;

type Reply<T> = oneshot::Sender<Result<T, StateError>>;

enum Job {
    /// One set or delete, or a transaction (`atomic`).
    Write {
        ops: Vec<Operation>,
        atomic: bool,
        reply: Reply<()>,
    },
    Get {
        keys: Vec<String>,
        reply: Reply<Vec<Option<Item>>>,
    },
    Query {
        prefix: String,
        query: Box<Query>,
        reply: Reply<QueryResponse>,
    },
}

impl Job {
    /// Whether the caller stopped waiting (timed out, or its request was dropped): such a
    /// job is skipped instead of done for nobody.
    fn abandoned(&self) -> bool {
        match self {
            Job::Write { reply, .. } => reply.is_closed(),
            Job::Get { reply, .. } => reply.is_closed(),
            Job::Query { reply, .. } => reply.is_closed(),
        }
    }
}

/// An answer held back until the transaction that produced it has committed.
enum Answer {
    Write(Reply<()>, Result<(), StateError>),
    Get(
        Reply<Vec<Option<Item>>>,
        Result<Vec<Option<Item>>, StateError>,
    ),
    Query(Reply<QueryResponse>, Result<QueryResponse, StateError>),
}

impl Answer {
    fn send(self) {
        // A caller that stopped waiting is no error.
        match self {
            Answer::Write(tx, r) => drop(tx.send(r)),
            Answer::Get(tx, r) => drop(tx.send(r)),
            Answer::Query(tx, r) => drop(tx.send(r)),
        }
    }

    /// The transaction did not commit: whatever this answer said, it did not happen.
    fn fail(self, msg: &str) -> Self {
        let err = || StateError::Backend(msg.to_string());
        match self {
            Answer::Write(tx, _) => Answer::Write(tx, Err(err())),
            Answer::Get(tx, _) => Answer::Get(tx, Err(err())),
            Answer::Query(tx, _) => Answer::Query(tx, Err(err())),
        }
    }
}

/// The component configuration, parsed from metadata.
#[derive(Debug, Clone)]
struct Config {
    connection: String,
    table: String,
    metadata_table: String,
    timeout: Duration,
    cleanup_interval: Option<Duration>,
    busy_timeout: Duration,
    disable_wal: bool,
    readers: usize,
}

impl Config {
    fn from_metadata(md: &Metadata) -> Result<Self, StateError> {
        let connection = md.require("connectionString")?.to_string();
        let table = identifier(md, "tableName", "state")?;
        let metadata_table = identifier(md, "metadataTableName", "metadata")?;
        if table == metadata_table {
            return Err(invalid(
                "metadata tableName and metadataTableName must differ",
            ));
        }
        let timeout =
            md.positive_duration(["timeout", "timeoutInSeconds"], Duration::from_secs(20))?;
        let cleanup_interval = match md.signed_duration("cleanupInterval")? {
            None => Some(Duration::from_secs(3600)),
            Some(d) => d.positive(),
        };
        let busy_timeout = match md.signed_duration("busyTimeout")? {
            None => Duration::from_secs(2),
            Some(d) => d.positive().unwrap_or_default(),
        };
        Ok(Config {
            connection,
            table,
            metadata_table,
            timeout,
            cleanup_interval,
            busy_timeout,
            disable_wal: md.bool("disableWAL", false)?,
            readers: md.usize("readConnections", 2, 1..=64)?,
        })
    }

    /// In-memory databases get one connection: a second one would be another database.
    fn in_memory(&self) -> bool {
        let c = self.connection.as_str();
        c == ":memory:" || c.starts_with("file::memory:") || c.contains("mode=memory")
    }
}

fn invalid(msg: impl Into<String>) -> StateError {
    StateError::InvalidRequest(msg.into())
}

/// A table name from metadata; restricted to what needs no quoting, since it is pasted
/// into SQL.
fn identifier(md: &Metadata, name: &str, default: &str) -> Result<String, StateError> {
    let v = md.get(name).unwrap_or(default);
    let ok = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && v.len() <= 64;
    if ok {
        Ok(v.to_string())
    } else {
        Err(md
            .error(name, Some(v), "must be letters, digits and underscores")
            .into())
    }
}

/// The SQL text of every statement, with the table names filled in once.
#[derive(Debug)]
struct Sql {
    upsert: String,
    insert_first: String,
    update_etag: String,
    delete: String,
    delete_etag: String,
    get: String,
    scan: String,
    counter_get: String,
    counter_set: String,
    cleanup: String,
    counter_key: String,
}

impl Sql {
    fn new(t: &str, m: &str) -> Self {
        let cols = "key, value, is_json, etag, content_type, expires_at";
        let set = "value = excluded.value, is_json = excluded.is_json, etag = excluded.etag, \
                   content_type = excluded.content_type, expires_at = excluded.expires_at";
        let live = "(expires_at IS NULL OR expires_at > ?";
        Sql {
            upsert: format!(
                "INSERT INTO {t} ({cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (key) DO UPDATE SET {set}"
            ),
            // First-write without ETag: only a missing (or expired) row may be written;
            // `changes() == 0` means the key exists.
            insert_first: format!(
                "INSERT INTO {t} ({cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (key) DO UPDATE SET {set} \
                 WHERE {t}.expires_at IS NOT NULL AND {t}.expires_at <= ?7"
            ),
            update_etag: format!(
                "UPDATE {t} SET value = ?2, is_json = ?3, etag = ?4, content_type = ?5, \
                 expires_at = ?6 WHERE key = ?1 AND etag = ?7 AND {live}8)"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            delete_etag: format!("DELETE FROM {t} WHERE key = ?1 AND etag = ?2 AND {live}3)"),
            get: format!(
                "SELECT value, etag, content_type, expires_at FROM {t} \
                 WHERE key = ?1 AND {live}2)"
            ),
            // Keys are compared bytewise, so every key that starts with the prefix sorts
            // at or after it and they are contiguous: scan from the prefix, stop at the
            // first key without it. (No LIKE: `_` and `%` in prefixes are literal.)
            scan: format!(
                "SELECT key, value, etag FROM {t} WHERE key >= ?1 AND is_json = 1 \
                 AND {live}2) ORDER BY key"
            ),
            counter_get: format!("SELECT value FROM {m} WHERE key = ?1"),
            counter_set: format!(
                "INSERT INTO {m} (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE key IN (SELECT key FROM {t} \
                 WHERE expires_at <= ?1 LIMIT {CLEANUP_CHUNK})"
            ),
            counter_key: format!("trellis-etag-counter-{t}"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A random starting point for a new database's ETag counter, so that ETags of a deleted
/// and re-created database file do not repeat the old ones.
fn random_start() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.write_u32(std::process::id());
    // 2^52 at most: room for 2^62 more writes before i64 runs out.
    i64::try_from(h.finish() >> 12).unwrap_or(1)
}

/// Our ETags are the decimal text of a positive counter; anything else cannot be ours.
fn parse_etag(etag: &str) -> Result<i64, StateError> {
    match etag.parse::<i64>() {
        Ok(n) if n > 0 && n.to_string() == etag => Ok(n),
        _ => Err(StateError::InvalidEtag(etag.to_string())),
    }
}

fn db_err(e: rusqlite::Error) -> StateError {
    StateError::Backend(format!("sqlite: {e}"))
}

fn open_connection(cfg: &Config) -> Result<Connection, StateError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(&cfg.connection, flags).map_err(|e| {
        StateError::Backend(format!(
            "cannot open sqlite database {:?}: {e}",
            cfg.connection
        ))
    })?;
    trellis_sqlite::wait_for_locks(&mut conn, cfg.busy_timeout).map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Opens the writing connection: journal mode, durability, schema.
fn open_writer(cfg: &Config, sql: &Sql) -> Result<Connection, StateError> {
    if !cfg.in_memory() && !cfg.connection.starts_with("file:") {
        // The runtime's default store lives in its data directory, which may not exist yet.
        if let Some(parent) = Path::new(&cfg.connection).parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StateError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
    }
    let conn = open_connection(cfg)?;
    if !cfg.in_memory() {
        let mode = if cfg.disable_wal { "DELETE" } else { "WAL" };
        let got =
            trellis_sqlite::set_journal_mode(&conn, mode, cfg.busy_timeout).map_err(db_err)?;
        if !got.eq_ignore_ascii_case(mode) {
            return Err(StateError::Backend(format!(
                "sqlite: cannot switch journal mode to {mode} (it is {got})"
            )));
        }
    }
    // FULL: every commit is fsynced, also in WAL mode, where NORMAL would not be.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864; \
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(db_err)?;
    let (t, m) = (&cfg.table, &cfg.metadata_table);
    // In one immediate transaction so that two processes starting at once agree on the
    // ETag counter's seed.
    let schema = format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS {t} (
             key TEXT NOT NULL PRIMARY KEY,
             value BLOB NOT NULL,
             is_json INTEGER NOT NULL,
             etag INTEGER NOT NULL,
             content_type TEXT,
             expires_at INTEGER
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)
             WHERE expires_at IS NOT NULL;
         CREATE TABLE IF NOT EXISTS {m} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
         INSERT OR IGNORE INTO {m} (key, value) VALUES ('{}', '{}');
         COMMIT;",
        sql.counter_key,
        random_start()
    );
    // A table of the same name made by someone else (Dapr's own sqlite component uses
    // other columns) would fail later in confusing ways: say so now.
    let layout = |conn: &Connection| {
        conn.prepare(&format!(
            "SELECT key, value, is_json, etag, content_type, expires_at FROM {t} LIMIT 0"
        ))
        .map(drop)
        .map_err(|e| {
            StateError::Backend(format!(
                "sqlite: table {t} exists with another layout ({e}); use another tableName"
            ))
        })
    };
    if let Err(e) = conn.execute_batch(&schema) {
        let _ = conn.execute_batch("ROLLBACK");
        layout(&conn)?;
        return Err(StateError::Backend(format!(
            "sqlite: cannot create table {t}: {e}"
        )));
    }
    layout(&conn)?;
    Ok(conn)
}

fn open_reader(cfg: &Config) -> Result<Connection, StateError> {
    let conn = open_connection(cfg)?;
    conn.execute_batch("PRAGMA query_only = 1; PRAGMA temp_store = MEMORY;")
        .map_err(db_err)?;
    Ok(conn)
}

/// Reads, shared by reader threads and (for in-memory databases) the writer thread.
fn read_job(conn: &Connection, sql: &Sql, job: Job, now: i64) -> Answer {
    match job {
        Job::Get { keys, reply } => {
            let res = get_many(conn, sql, &keys, now);
            Answer::Get(reply, res)
        }
        Job::Query {
            prefix,
            query,
            reply,
        } => {
            let res = run_query(conn, sql, &prefix, &query, now);
            Answer::Query(reply, res)
        }
        Job::Write { reply, .. } => Answer::Write(
            reply,
            Err(StateError::Backend(
                "internal error: a write reached a reader".into(),
            )),
        ),
    }
}

fn get_many(
    conn: &Connection,
    sql: &Sql,
    keys: &[String],
    now: i64,
) -> Result<Vec<Option<Item>>, StateError> {
    let mut stmt = conn.prepare_cached(&sql.get).map_err(db_err)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let item = stmt
            .query_row(params![key, now], |row| {
                Ok(Item {
                    value: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                    etag: row.get::<_, i64>(1)?.to_string(),
                    content_type: row.get(2)?,
                    expires_at: row.get::<_, Option<i64>>(3)?.map(from_ms),
                })
            })
            .optional()
            .map_err(db_err)?;
        out.push(item);
    }
    Ok(out)
}

fn run_query(
    conn: &Connection,
    sql: &Sql,
    prefix: &str,
    query: &Query,
    now: i64,
) -> Result<QueryResponse, StateError> {
    let offset = match &query.token {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| invalid(format!("invalid query token {t:?}")))?,
    };
    let mut stmt = conn.prepare_cached(&sql.scan).map_err(db_err)?;
    let mut rows = stmt.query(params![prefix, now]).map_err(db_err)?;
    let mut hits: Vec<(String, Vec<u8>, i64, Value)> = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let key: String = row.get(0).map_err(db_err)?;
        if !key.starts_with(prefix) {
            break;
        }
        let data: Vec<u8> = row.get(1).map_err(db_err)?;
        // `is_json` is the writer's word; a value that does not parse never matches.
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if query.filter.as_ref().is_none_or(|f| f.matches(&value)) {
            let etag: i64 = row.get(2).map_err(db_err)?;
            hits.push((key, data, etag, value));
        }
    }
    if !query.sort.is_empty() {
        // Stable over key order, so equal sort values page deterministically.
        hits.sort_by(|a, b| compare(&a.3, &b.3, &query.sort));
    }
    let total = hits.len();
    let end = query
        .limit
        .map_or(total, |l| offset.saturating_add(l).min(total));
    let results = hits
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .map(|(key, data, etag, _)| QueryResult {
            key,
            data: Bytes::from(data),
            etag: Some(etag.to_string()),
        })
        .collect();
    let token = (query.limit.is_some() && end < total).then(|| end.to_string());
    Ok(QueryResponse { results, token })
}

/// Collects a batch: `first` and whatever is queued behind it. When the batch is smaller
/// than the previous one, the callers answered by that commit are most likely just about
/// to send their next write: waiting a moment for them (a small fraction of a commit,
/// at most [`MAX_GATHER_WAIT`]) lets them share the next fsync instead of each half of
/// them paying for one.
fn gather(
    rx: &mpsc::Receiver<Job>,
    first: Job,
    last_batch: usize,
    last_commit: Duration,
) -> Vec<Job> {
    let mut batch = vec![first];
    let deadline = Instant::now() + (last_commit / 4).min(MAX_GATHER_WAIT);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if batch.len() >= last_batch {
                    break;
                }
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
    }
    batch
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    sql: Arc<Sql>,
    cleanup_interval: Option<Duration>,
    busy_timeout: Duration,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        trellis_sqlite::set_busy_budget(self.busy_timeout);
        let mut next_cleanup = self.cleanup_interval.map(|i| Instant::now() + i);
        let (mut last_batch, mut last_commit) = (0, Duration::ZERO);
        loop {
            let wait = next_cleanup.map(|t| t.saturating_duration_since(Instant::now()));
            let first = match wait {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(wait) => rx.recv_timeout(wait),
            };
            match first {
                Ok(job) => {
                    let batch = gather(&rx, job, last_batch, last_commit);
                    last_batch = batch.len();
                    let started = Instant::now();
                    self.batch(batch);
                    last_commit = started.elapsed();
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The store was dropped and every queued job is done.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let (Some(t), Some(interval)) = (next_cleanup, self.cleanup_interval)
                && Instant::now() >= t
            {
                // One chunk at a time, with the queued jobs served in between.
                next_cleanup = Some(if self.cleanup_chunk() {
                    Instant::now()
                } else {
                    Instant::now() + interval
                });
            }
        }
    }

    /// Applies a batch in one transaction; answers once it has committed.
    fn batch(&mut self, batch: Vec<Job>) {
        let batch: Vec<Job> = batch.into_iter().filter(|j| !j.abandoned()).collect();
        if batch.is_empty() {
            return;
        }
        let now = now_ms();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("sqlite: cannot start a write transaction: {e}");
            for job in batch {
                fail_job(job, &msg);
            }
            return;
        }
        let mut answers = Vec::with_capacity(batch.len());
        let mut aborted: Option<String> = None;
        let mut counter = match self.read_counter() {
            Ok(c) => c,
            Err(e) => {
                aborted = Some(format!("sqlite: cannot read the etag counter: {e}"));
                0
            }
        };
        let start = counter;
        for job in batch {
            if let Some(msg) = &aborted {
                fail_job(job, msg);
                continue;
            }
            match job {
                Job::Write { ops, atomic, reply } => {
                    let res = self.write(&ops, atomic, &mut counter, now);
                    if let Err(e) = &res
                        && self.conn.is_autocommit()
                    {
                        // Some errors (disk full, I/O) roll back the whole transaction:
                        // everything this batch did so far is gone, and all of it fails.
                        aborted = Some(format!("sqlite: transaction rolled back: {e}"));
                    }
                    answers.push(Answer::Write(reply, res));
                }
                read => answers.push(read_job(&self.conn, &self.sql, read, now)),
            }
        }
        if aborted.is_none()
            && counter != start
            && let Err(e) = self.write_counter(counter)
        {
            aborted = Some(format!("sqlite: cannot save the etag counter: {e}"));
        }
        let outcome = match aborted {
            Some(msg) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(msg)
            }
            None => self.conn.execute_batch("COMMIT").map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                format!("sqlite: commit failed: {e}")
            }),
        };
        for answer in answers {
            match &outcome {
                Ok(()) => answer.send(),
                Err(msg) => answer.fail(msg).send(),
            }
        }
    }

    fn read_counter(&self) -> Result<i64, rusqlite::Error> {
        let mut stmt = self.conn.prepare_cached(&self.sql.counter_get)?;
        let text: Option<String> = stmt
            .query_row([&self.sql.counter_key], |r| r.get(0))
            .optional()?;
        // A missing or mangled counter row (someone edited the table) restarts from a
        // random point rather than failing every write.
        Ok(text
            .and_then(|t| t.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(random_start))
    }

    fn write_counter(&self, counter: i64) -> Result<(), rusqlite::Error> {
        let mut stmt = self.conn.prepare_cached(&self.sql.counter_set)?;
        stmt.execute(params![self.sql.counter_key, counter.to_string()])?;
        Ok(())
    }

    /// One job's operations; a transaction runs in a savepoint so that a failing
    /// operation undoes the ones before it, and nothing else in the batch.
    fn write(
        &self,
        ops: &[Operation],
        atomic: bool,
        counter: &mut i64,
        now: i64,
    ) -> Result<(), StateError> {
        if !atomic || ops.len() <= 1 {
            // A single statement is atomic by itself.
            let before = *counter;
            let res = ops.iter().try_for_each(|op| self.apply(op, counter, now));
            if res.is_err() {
                *counter = before;
            }
            return res;
        }
        self.conn.execute_batch("SAVEPOINT tx").map_err(db_err)?;
        let before = *counter;
        match ops.iter().try_for_each(|op| self.apply(op, counter, now)) {
            Ok(()) => self.conn.execute_batch("RELEASE tx").map_err(db_err),
            Err(e) => {
                *counter = before;
                if !self.conn.is_autocommit() {
                    self.conn
                        .execute_batch("ROLLBACK TO tx; RELEASE tx")
                        .map_err(db_err)?;
                }
                Err(e)
            }
        }
    }

    fn apply(&self, op: &Operation, counter: &mut i64, now: i64) -> Result<(), StateError> {
        match op {
            Operation::Upsert(req) => self.set(req, counter, now),
            Operation::Delete(req) => self.delete(req, now),
        }
    }

    fn set(&self, req: &SetRequest, counter: &mut i64, now: i64) -> Result<(), StateError> {
        let expected = req.etag.as_deref().map(parse_etag).transpose()?;
        *counter += 1;
        let etag = *counter;
        let expires_at = req
            .ttl
            .map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        let value: &[u8] = &req.value;
        let changed = match (expected, req.concurrency) {
            (Some(expected), _) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(&self.sql.update_etag)
                    .map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at,
                    expected,
                    now
                ])
            }
            (None, Concurrency::FirstWrite) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(&self.sql.insert_first)
                    .map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at,
                    now
                ])
            }
            (None, Concurrency::LastWrite) => {
                let mut stmt = self.conn.prepare_cached(&self.sql.upsert).map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at
                ])
            }
        }
        .map_err(db_err)?;
        if changed == 0 {
            return Err(StateError::EtagMismatch);
        }
        Ok(())
    }

    fn delete(&self, req: &DeleteRequest, now: i64) -> Result<(), StateError> {
        match req.etag.as_deref().map(parse_etag).transpose()? {
            Some(expected) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(&self.sql.delete_etag)
                    .map_err(db_err)?;
                let changed = stmt
                    .execute(params![req.key, expected, now])
                    .map_err(db_err)?;
                if changed == 0 {
                    return Err(StateError::EtagMismatch);
                }
            }
            None => {
                let mut stmt = self.conn.prepare_cached(&self.sql.delete).map_err(db_err)?;
                stmt.execute(params![req.key]).map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// Deletes one chunk of expired rows in its own transaction, so writers waiting
    /// meanwhile (in this process or others) are held up for one chunk at most. Returns
    /// whether more may be left.
    fn cleanup_chunk(&mut self) -> bool {
        let res = (|| -> Result<usize, rusqlite::Error> {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let n = self.conn.execute(&self.sql.cleanup, [now_ms()])?;
            self.conn.execute_batch("COMMIT")?;
            Ok(n)
        })();
        match res {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(rows = n, "sqlite state store: deleted expired rows");
                }
                n == CLEANUP_CHUNK
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(error = %e, "sqlite state store: expired row clean-up failed");
                false
            }
        }
    }
}

fn fail_job(job: Job, msg: &str) {
    let err = || StateError::Backend(msg.to_string());
    match job {
        Job::Write { reply, .. } => drop(reply.send(Err(err()))),
        Job::Get { reply, .. } => drop(reply.send(Err(err()))),
        Job::Query { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// A reader thread: takes whatever reads are queued and serves them in one read
/// transaction. The threads take turns on the shared receiver.
fn reader_loop(
    conn: Connection,
    sql: Arc<Sql>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    busy_timeout: Duration,
) {
    trellis_sqlite::set_busy_budget(busy_timeout);
    loop {
        let batch = {
            let Ok(rx) = rx.lock() else { return };
            let Ok(first) = rx.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let now = now_ms();
        // One snapshot for the batch saves taking a WAL read lock per get. It is no older
        // than the moment the batch was taken, so a read still sees every write that was
        // acknowledged before it was asked.
        let in_tx = batch.len() > 1 && conn.execute_batch("BEGIN").is_ok();
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            if job.abandoned() {
                continue;
            }
            answers.push(read_job(&conn, &sql, job, now));
        }
        if in_tx {
            let _ = conn.execute_batch("COMMIT");
        }
        for a in answers {
            a.send();
        }
    }
}

/// Dapr's `state.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteStore {
    writes: mpsc::Sender<Job>,
    /// The reader threads' channel; for an in-memory database, the writer's.
    reads: mpsc::Sender<Job>,
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
        let (writes, write_rx) = mpsc::channel();
        let writer = Writer {
            conn,
            sql: sql.clone(),
            cleanup_interval: cfg.cleanup_interval,
            busy_timeout: cfg.busy_timeout,
        };
        let spawn_err =
            |e: std::io::Error| StateError::Backend(format!("cannot start sqlite thread: {e}"));
        std::thread::Builder::new()
            .name("trellis-sqlite-writer".into())
            .spawn(move || writer.run(write_rx))
            .map_err(spawn_err)?;
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
        Ok(SqliteStore {
            writes,
            reads,
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
        let keys = vec![key.to_string()];
        let mut items = self
            .call(&self.reads, |reply| Job::Get { keys, reply })
            .await?;
        Ok(items.pop().flatten())
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        let owned = keys.to_vec();
        match self
            .call(&self.reads, |reply| Job::Get { keys: owned, reply })
            .await
        {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("42").unwrap(), 42);
        for bad in [
            "",
            "0",
            "-1",
            "042",
            "+42",
            "4 2",
            "x",
            "99999999999999999999",
        ] {
            assert!(
                matches!(parse_etag(bad), Err(StateError::InvalidEtag(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn config() {
        let md = |pairs: &[(&str, &str)]| Metadata::from_pairs(pairs.iter().copied());
        assert!(Config::from_metadata(&md(&[])).is_err());
        let c = Config::from_metadata(&md(&[("ConnectionString", "/x/data.db")])).unwrap();
        assert_eq!(c.table, "state");
        assert_eq!(c.timeout, Duration::from_secs(20));
        assert_eq!(c.cleanup_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.busy_timeout, Duration::from_secs(2));
        assert!(!c.disable_wal && !c.in_memory());
        let c = Config::from_metadata(&md(&[
            ("connectionString", ":memory:"),
            ("tableName", "my_state"),
            ("timeoutInSeconds", "5"),
            ("cleanupInterval", "-1"),
            ("busyTimeout", "100ms"),
            ("disableWAL", "true"),
        ]))
        .unwrap();
        assert!(c.in_memory() && c.disable_wal);
        assert_eq!(c.table, "my_state");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.cleanup_interval, None);
        assert_eq!(c.busy_timeout, Duration::from_millis(100));
        for bad in ["st ate", "x;drop", "1abc", "\"q\""] {
            let r = Config::from_metadata(&md(&[("connectionString", "a"), ("tableName", bad)]));
            assert!(r.is_err(), "{bad:?}");
        }
    }
}
