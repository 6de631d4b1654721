//! `lock.sqlite`: the embedded lock store, one SQLite file (by default
//! `<data-dir>/lock.db`) shared by every `trellis` process on the machine.
//!
//! Every operation is one job for the shared group-commit writer
//! ([`trellis_sqlite::writer`]): the writer applies a batch of them inside one
//! `BEGIN IMMEDIATE` transaction, which holds SQLite's write lock, so each process's check
//! of a lease and its taking of it happen with no other process in between. The answer
//! goes out only once the transaction has committed, so a caller told it holds the lock
//! holds it in the file every other process reads.
//!
//! Leases are not made durable against a power cut (the jobs say `durable() == false`, so
//! a batch of them commits without an fsync; it still survives the process being killed).
//! A power cut stops every process on the machine, and with them every holder and every
//! waiter of this machine-local store: nothing is left whose lease could be lost. What a
//! power cut can undo is the last fencing tokens handed out, so a token may be handed out
//! again after one; docs/lock-stores.md says so.
//!
//! The fencing token is one counter for the whole table (in its metadata table), read when
//! a batch begins and written back when it finishes, so tokens grow across resources and
//! processes, and unlocked or expired rows can simply be deleted.

use std::fmt;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use trellis_sqlite::StoreSettings;
use trellis_sqlite::writer::{Backend, Options, WriteConnection};

use crate::{LockError, LockStore, Metadata, TryLock, UnlockStatus, expiry_ms, validate};

/// How long a connection waits for another process's write lock, by default.
/// How long a call waits for its answer, by default.
/// How often expired leases are deleted.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);
/// The counter's key in the metadata table.
const COUNTER_KEY: &str = "fencing-token";

type Reply<T> = oneshot::Sender<Result<T, LockError>>;

enum Job {
    Lock {
        resource: String,
        owner: String,
        expiry_ms: i64,
        reply: Reply<TryLock>,
    },
    Unlock {
        resource: String,
        owner: String,
        reply: Reply<UnlockStatus>,
    },
}

enum Answer {
    Lock(Reply<TryLock>, Result<TryLock, LockError>),
    Unlock(Reply<UnlockStatus>, Result<UnlockStatus, LockError>),
}

/// The SQL of one table, formatted once.
struct Sql {
    lock: String,
    unlock: String,
    holder: String,
    counter_get: String,
    counter_set: String,
    cleanup: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        let m = format!("{t}_metadata");
        Sql {
            // Takes a missing or expired lease in one statement: the update's WHERE keeps
            // an unexpired one, and then nothing changes.
            lock: format!(
                "INSERT INTO {t} (resource, owner, expires_at, token) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (resource) DO UPDATE SET owner = excluded.owner, \
                 expires_at = excluded.expires_at, token = excluded.token \
                 WHERE {t}.expires_at <= ?5"
            ),
            unlock: format!(
                "DELETE FROM {t} WHERE resource = ?1 AND owner = ?2 AND expires_at > ?3"
            ),
            holder: format!("SELECT owner FROM {t} WHERE resource = ?1 AND expires_at > ?2"),
            counter_get: format!("SELECT value FROM {m} WHERE key = '{COUNTER_KEY}'"),
            counter_set: format!("UPDATE {m} SET value = ?1 WHERE key = '{COUNTER_KEY}'"),
            cleanup: format!("DELETE FROM {t} WHERE expires_at <= ?1"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn db_err(e: rusqlite::Error) -> LockError {
    LockError::Backend(format!("sqlite: {e}"))
}

/// The writer thread's side of the store.
struct LockWriter {
    sql: Sql,
    /// The batch's clock, so that all its expiry checks agree.
    now: i64,
    /// The fencing counter as the batch advanced it, and as the batch found it.
    counter: i64,
    start: i64,
}

impl LockWriter {
    fn lock(
        &mut self,
        conn: &Connection,
        resource: &str,
        owner: &str,
        expiry_ms: i64,
    ) -> Result<TryLock, LockError> {
        let token = self.counter + 1;
        let expires = self.now.saturating_add(expiry_ms);
        let changed = conn
            .prepare_cached(&self.sql.lock)
            .and_then(|mut s| s.execute(params![resource, owner, expires, token, self.now]))
            .map_err(db_err)?;
        if changed == 0 {
            return Ok(TryLock::Held);
        }
        self.counter = token;
        Ok(TryLock::Acquired {
            fencing_token: u64::try_from(token).unwrap_or(0),
        })
    }

    fn unlock(
        &mut self,
        conn: &Connection,
        resource: &str,
        owner: &str,
    ) -> Result<UnlockStatus, LockError> {
        let deleted = conn
            .prepare_cached(&self.sql.unlock)
            .and_then(|mut s| s.execute(params![resource, owner, self.now]))
            .map_err(db_err)?;
        if deleted > 0 {
            return Ok(UnlockStatus::Success);
        }
        let holder: Option<String> = conn
            .prepare_cached(&self.sql.holder)
            .and_then(|mut s| {
                s.query_row(params![resource, self.now], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        Ok(match holder {
            Some(_) => UnlockStatus::LockBelongsToOthers,
            None => UnlockStatus::LockDoesNotExist,
        })
    }
}

impl Backend for LockWriter {
    type Job = Job;
    type Answer = Answer;

    fn apply(&mut self, conn: &Connection, job: Job) -> Answer {
        match job {
            Job::Lock {
                resource,
                owner,
                expiry_ms,
                reply,
            } => {
                let res = self.lock(conn, &resource, &owner, expiry_ms);
                Answer::Lock(reply, res)
            }
            Job::Unlock {
                resource,
                owner,
                reply,
            } => {
                let res = self.unlock(conn, &resource, &owner);
                Answer::Unlock(reply, res)
            }
        }
    }

    fn error<'a>(&self, answer: &'a Answer) -> Option<&'a dyn fmt::Display> {
        match answer {
            Answer::Lock(_, Err(e)) => Some(e),
            Answer::Unlock(_, Err(e)) => Some(e),
            _ => None,
        }
    }

    fn send(&mut self, answer: Answer, failure: Option<&str>) {
        let failed = || LockError::Backend(failure.unwrap_or_default().to_string());
        match answer {
            Answer::Lock(reply, res) => drop(reply.send(if failure.is_some() {
                Err(failed())
            } else {
                res
            })),
            Answer::Unlock(reply, res) => drop(reply.send(if failure.is_some() {
                Err(failed())
            } else {
                res
            })),
        }
    }

    fn reject(&mut self, job: Job, reason: &str) {
        let err = || LockError::Backend(reason.to_string());
        match job {
            Job::Lock { reply, .. } => drop(reply.send(Err(err()))),
            Job::Unlock { reply, .. } => drop(reply.send(Err(err()))),
        }
    }

    /// See the module docs: a lease need not survive a power cut.
    fn durable(&self, _: &Job) -> bool {
        false
    }

    /// Each job writes with at most one statement.
    fn needs_savepoint(&self, _: &Job) -> bool {
        false
    }

    /// A lock nobody waits for would only keep others out until it expires.
    fn abandoned(&self, job: &Job) -> bool {
        match job {
            Job::Lock { reply, .. } => reply.is_closed(),
            Job::Unlock { reply, .. } => reply.is_closed(),
        }
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        self.now = now_ms();
        let counter: Option<i64> = conn
            .prepare_cached(&self.sql.counter_get)
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .map_err(|e| format!("sqlite: {e}"))?;
        self.counter = counter.unwrap_or(0);
        self.start = self.counter;
        Ok(())
    }

    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        if self.counter == self.start {
            return Ok(());
        }
        conn.prepare_cached(&self.sql.counter_set)
            .and_then(|mut s| s.execute([self.counter]))
            .map(|_| ())
            .map_err(|e| format!("sqlite: {e}"))
    }

    fn periodic(&mut self, db: &mut WriteConnection) -> bool {
        let sql = &self.sql.cleanup;
        if let Err(e) = db.transaction(|conn| conn.execute(sql, [now_ms()])) {
            tracing::warn!(error = %e, "lock.sqlite: cannot delete expired leases");
        }
        false
    }
}

/// `lock.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteLockStore {
    writes: mpsc::Sender<Job>,
    timeout: Duration,
    connection: String,
}

impl SqliteLockStore {
    /// Opens (creating when missing) the database and tables `metadata` names and starts
    /// the writer thread, which stops when the store is dropped.
    pub async fn open(metadata: &Metadata) -> Result<Self, LockError> {
        let cfg = StoreSettings::from_metadata(metadata, "locks")?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| LockError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: StoreSettings) -> Result<Self, LockError> {
        let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, 8, "WAL")
            .map_err(LockError::backend)?;
        let t = &cfg.table;
        // In one immediate transaction, so that processes starting at once do not trip
        // over each other.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {t} (
                 resource TEXT NOT NULL PRIMARY KEY,
                 owner TEXT NOT NULL,
                 expires_at INTEGER NOT NULL,
                 token INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS {t}_metadata (
                 key TEXT NOT NULL PRIMARY KEY,
                 value INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO {t}_metadata (key, value) VALUES ('{COUNTER_KEY}', 0);
             COMMIT;"
        ))
        .map_err(db_err)?;
        let writer = LockWriter {
            sql: Sql::new(t),
            now: 0,
            counter: 0,
            start: 0,
        };
        let options = Options {
            periodic: Some(CLEANUP_EVERY),
            ..Options::new("trellis-lock-writer", cfg.busy_timeout)
        };
        let writes =
            trellis_sqlite::writer::start(conn, writer, options).map_err(LockError::backend)?;
        Ok(SqliteLockStore {
            writes,
            timeout: cfg.timeout,
            connection: cfg.connection,
        })
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, LockError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(job(tx))
            .map_err(|_| LockError::Backend("sqlite lock store is closed".into()))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(LockError::Backend(
                "sqlite lock store thread stopped".into(),
            )),
            Err(_) => Err(LockError::Backend(format!(
                "sqlite lock operation on {:?} timed out after {:?}",
                self.connection, self.timeout
            ))),
        }
    }
}

#[async_trait]
impl LockStore for SqliteLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        validate(resource, owner, Some(expiry))?;
        let (resource, owner) = (resource.to_string(), owner.to_string());
        self.call(|reply| Job::Lock {
            resource,
            owner,
            expiry_ms: expiry_ms(expiry),
            reply,
        })
        .await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        validate(resource, owner, None)?;
        let (resource, owner) = (resource.to_string(), owner.to_string());
        self.call(|reply| Job::Unlock {
            resource,
            owner,
            reply,
        })
        .await
    }
}
