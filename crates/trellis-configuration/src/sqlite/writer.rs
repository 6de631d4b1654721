//! The embedded configuration store's side of the shared group-commit writer: the SQL of
//! its reads, sets and deletes (each a closure on [`trellis_sqlite::calls`]), and the
//! version counter a batch advances.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use trellis_sqlite::calls;

use crate::{ConfigurationError, Item};

/// The counter's key in the metadata table.
pub(super) const COUNTER_KEY: &str = "version";

/// The SQL of one table, formatted once.
#[derive(Debug)]
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

/// The writer thread's side of the store (and the SQL its inline reads use).
#[derive(Debug)]
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
    pub(super) fn get(
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

    pub(super) fn set(
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

    pub(super) fn delete(
        &mut self,
        conn: &Connection,
        key: &str,
    ) -> Result<bool, ConfigurationError> {
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

/// The counter is read when a batch begins and written once when it ends, not per change.
impl calls::Shared for ConfigWriter {
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
