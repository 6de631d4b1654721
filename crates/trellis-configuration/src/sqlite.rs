//! `configuration.sqlite`: the embedded configuration store, one SQLite file (by default
//! `<data-dir>/configuration.db`) shared by every `trellis` process on the machine.
//!
//! A table of key, value, version and metadata (a JSON object). The version is a number
//! from one counter for the whole table (in its metadata table), so that it grows on every
//! change of any item and a deleted and re-set key never gets an old version back. Apps
//! only read; `trellis config set` writes through [`SqliteConfigurationStore::set`].
//!
//! Every operation, reads included, is a job for the shared group-commit writer
//! ([`trellis_sqlite::writer`]), on the one connection the store owns (an in-memory
//! database has only that one). Reads are rare (an app reads its configuration when it
//! starts and now and then), so a connection of their own would buy little.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use trellis_sqlite::StoreSettings;
use trellis_sqlite::writer::{Backend, Options};

use crate::{ConfigurationError, ConfigurationStore, Item, Metadata};

/// How long a connection waits for another process's write lock, by default.
/// How long a call waits for its answer, by default.
/// The counter's key in the metadata table.
const COUNTER_KEY: &str = "version";

type Reply<T> = oneshot::Sender<Result<T, ConfigurationError>>;

enum Job {
    Get {
        keys: Vec<String>,
        reply: Reply<BTreeMap<String, Item>>,
    },
    Set {
        key: String,
        value: String,
        metadata: String,
        reply: Reply<u64>,
    },
    Delete {
        key: String,
        reply: Reply<bool>,
    },
}

enum Answer {
    Get(
        Reply<BTreeMap<String, Item>>,
        Result<BTreeMap<String, Item>, ConfigurationError>,
    ),
    Set(Reply<u64>, Result<u64, ConfigurationError>),
    Delete(Reply<bool>, Result<bool, ConfigurationError>),
}

/// The SQL of one table, formatted once.
struct Sql {
    get: String,
    all: String,
    set: String,
    delete: String,
    counter_get: String,
    counter_set: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        let m = format!("{t}_metadata");
        Sql {
            get: format!("SELECT value, version, metadata FROM {t} WHERE key = ?1"),
            all: format!("SELECT key, value, version, metadata FROM {t} ORDER BY key"),
            set: format!(
                "INSERT INTO {t} (key, value, version, metadata) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, metadata = excluded.metadata"
            ),
            delete: format!("DELETE FROM {t} WHERE key = ?1"),
            counter_get: format!("SELECT value FROM {m} WHERE key = '{COUNTER_KEY}'"),
            counter_set: format!("UPDATE {m} SET value = ?1 WHERE key = '{COUNTER_KEY}'"),
        }
    }
}

fn db_err(e: rusqlite::Error) -> ConfigurationError {
    ConfigurationError::Backend(format!("sqlite: {e}"))
}

fn item(value: String, version: i64, metadata: &str) -> Result<Item, ConfigurationError> {
    let metadata = if metadata.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(metadata).map_err(|e| {
            ConfigurationError::Backend(format!("sqlite: stored metadata is not an object: {e}"))
        })?
    };
    Ok(Item {
        value,
        version: version.to_string(),
        metadata,
    })
}

/// The writer thread's side of the store.
struct ConfigWriter {
    sql: Sql,
    /// The version counter as the batch advanced it, and as the batch found it.
    counter: i64,
    start: i64,
}

impl ConfigWriter {
    fn get(
        &self,
        conn: &Connection,
        keys: &[String],
    ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        let mut items = BTreeMap::new();
        if keys.is_empty() {
            let mut stmt = conn.prepare_cached(&self.sql.all).map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (key, value, version, metadata) = row.map_err(db_err)?;
                items.insert(key, item(value, version, &metadata)?);
            }
            return Ok(items);
        }
        let mut stmt = conn.prepare_cached(&self.sql.get).map_err(db_err)?;
        for key in keys {
            let row: Option<(String, i64, String)> = stmt
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(db_err)?;
            if let Some((value, version, metadata)) = row {
                items.insert(key.clone(), item(value, version, &metadata)?);
            }
        }
        Ok(items)
    }

    fn set(
        &mut self,
        conn: &Connection,
        key: &str,
        value: &str,
        metadata: &str,
    ) -> Result<u64, ConfigurationError> {
        let version = self.counter + 1;
        conn.prepare_cached(&self.sql.set)
            .and_then(|mut s| s.execute(params![key, value, version, metadata]))
            .map_err(db_err)?;
        self.counter = version;
        Ok(u64::try_from(version).unwrap_or(0))
    }

    fn delete(&mut self, conn: &Connection, key: &str) -> Result<bool, ConfigurationError> {
        let deleted = conn
            .prepare_cached(&self.sql.delete)
            .and_then(|mut s| s.execute([key]))
            .map_err(db_err)?;
        if deleted > 0 {
            // A deletion is a change too: the next version is larger than any before it.
            self.counter += 1;
        }
        Ok(deleted > 0)
    }
}

impl Backend for ConfigWriter {
    type Job = Job;
    type Answer = Answer;

    fn apply(&mut self, conn: &Connection, job: Job) -> Answer {
        match job {
            Job::Get { keys, reply } => {
                let res = self.get(conn, &keys);
                Answer::Get(reply, res)
            }
            Job::Set {
                key,
                value,
                metadata,
                reply,
            } => {
                let res = self.set(conn, &key, &value, &metadata);
                Answer::Set(reply, res)
            }
            Job::Delete { key, reply } => {
                let res = self.delete(conn, &key);
                Answer::Delete(reply, res)
            }
        }
    }

    fn error<'a>(&self, answer: &'a Answer) -> Option<&'a dyn fmt::Display> {
        match answer {
            Answer::Get(_, Err(e)) | Answer::Set(_, Err(e)) | Answer::Delete(_, Err(e)) => Some(e),
            _ => None,
        }
    }

    fn send(&mut self, answer: Answer, failure: Option<&str>) {
        let failed = || ConfigurationError::Backend(failure.unwrap_or_default().to_string());
        match answer {
            Answer::Get(reply, res) => drop(reply.send(if failure.is_some() {
                Err(failed())
            } else {
                res
            })),
            Answer::Set(reply, res) => drop(reply.send(if failure.is_some() {
                Err(failed())
            } else {
                res
            })),
            Answer::Delete(reply, res) => drop(reply.send(if failure.is_some() {
                Err(failed())
            } else {
                res
            })),
        }
    }

    fn reject(&mut self, job: Job, reason: &str) {
        let err = || ConfigurationError::Backend(reason.to_string());
        match job {
            Job::Get { reply, .. } => drop(reply.send(Err(err()))),
            Job::Set { reply, .. } => drop(reply.send(Err(err()))),
            Job::Delete { reply, .. } => drop(reply.send(Err(err()))),
        }
    }

    /// A read changes nothing, so nothing about it needs to survive a power cut.
    fn durable(&self, job: &Job) -> bool {
        !matches!(job, Job::Get { .. })
    }

    /// Each job writes with at most one statement.
    fn needs_savepoint(&self, _: &Job) -> bool {
        false
    }

    /// A read nobody waits for has no point.
    fn abandoned(&self, job: &Job) -> bool {
        match job {
            Job::Get { reply, .. } => reply.is_closed(),
            _ => false,
        }
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
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
}

/// `configuration.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteConfigurationStore {
    writes: mpsc::Sender<Job>,
    timeout: Duration,
    connection: String,
}

impl SqliteConfigurationStore {
    /// Opens (creating when missing) the database and tables `metadata` names and starts
    /// the writer thread, which stops when the store is dropped.
    pub async fn open(metadata: &Metadata) -> Result<Self, ConfigurationError> {
        let cfg = StoreSettings::from_metadata(metadata, "configuration")?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| ConfigurationError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: StoreSettings) -> Result<Self, ConfigurationError> {
        let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, 8, "WAL")
            .map_err(ConfigurationError::backend)?;
        let t = &cfg.table;
        // In one immediate transaction, so that processes starting at once do not trip
        // over each other.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {t} (
                 key TEXT NOT NULL PRIMARY KEY,
                 value TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 metadata TEXT NOT NULL DEFAULT '{{}}'
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS {t}_metadata (
                 key TEXT NOT NULL PRIMARY KEY,
                 value INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO {t}_metadata (key, value) VALUES ('{COUNTER_KEY}', 0);
             COMMIT;"
        ))
        .map_err(db_err)?;
        let writer = ConfigWriter {
            sql: Sql::new(t),
            counter: 0,
            start: 0,
        };
        let options = Options::new("trellis-configuration-writer", cfg.busy_timeout);
        let writes = trellis_sqlite::writer::start(conn, writer, options)
            .map_err(ConfigurationError::backend)?;
        Ok(SqliteConfigurationStore {
            writes,
            timeout: cfg.timeout,
            connection: cfg.connection,
        })
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, ConfigurationError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(job(tx)).map_err(|_| {
            ConfigurationError::Backend("sqlite configuration store is closed".into())
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(ConfigurationError::Backend(
                "sqlite configuration store thread stopped".into(),
            )),
            Err(_) => Err(ConfigurationError::Backend(format!(
                "sqlite configuration operation on {:?} timed out after {:?}",
                self.connection, self.timeout
            ))),
        }
    }

    /// Sets `key` to `value` with `metadata`; answers the item's new version, larger than
    /// every version the store handed out before.
    pub async fn set(
        &self,
        key: &str,
        value: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<u64, ConfigurationError> {
        if key.is_empty() {
            return Err(ConfigurationError::InvalidRequest("key is empty".into()));
        }
        let metadata = serde_json::to_string(metadata).map_err(ConfigurationError::backend)?;
        let (key, value) = (key.to_string(), value.to_string());
        self.call(|reply| Job::Set {
            key,
            value,
            metadata,
            reply,
        })
        .await
    }

    /// Removes `key`; answers whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, ConfigurationError> {
        let key = key.to_string();
        self.call(|reply| Job::Delete { key, reply }).await
    }
}

#[async_trait]
impl ConfigurationStore for SqliteConfigurationStore {
    async fn get(
        &self,
        keys: &[String],
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        let keys = keys.to_vec();
        self.call(|reply| Job::Get { keys, reply }).await
    }
}
