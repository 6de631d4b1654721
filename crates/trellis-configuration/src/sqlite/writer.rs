//! The embedded configuration store's side of the shared group-commit writer: its jobs
//! (reads, sets, deletes), their SQL, and the version counter a batch advances.

use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use trellis_sqlite::writer::Backend;

use crate::{ConfigurationError, Item};

/// The counter's key in the metadata table.
pub(super) const COUNTER_KEY: &str = "version";

pub(super) type Reply<T> = oneshot::Sender<Result<T, ConfigurationError>>;

pub(super) enum Job {
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

pub(super) enum Answer {
    Get(
        Reply<BTreeMap<String, Item>>,
        Result<BTreeMap<String, Item>, ConfigurationError>,
    ),
    Set(Reply<u64>, Result<u64, ConfigurationError>),
    Delete(Reply<bool>, Result<bool, ConfigurationError>),
}

/// The SQL of one table, formatted once.
pub(super) struct Sql {
    get: String,
    all: String,
    set: String,
    delete: String,
    counter_get: String,
    counter_set: String,
}

impl Sql {
    pub(super) fn new(t: &str) -> Self {
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

pub(super) fn db_err(e: rusqlite::Error) -> ConfigurationError {
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
pub(super) struct ConfigWriter {
    sql: Sql,
    /// The version counter as the batch advanced it, and as the batch found it.
    counter: i64,
    start: i64,
}

impl ConfigWriter {
    pub(super) fn new(table: &str) -> Self {
        ConfigWriter {
            sql: Sql::new(table),
            counter: 0,
            start: 0,
        }
    }
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
