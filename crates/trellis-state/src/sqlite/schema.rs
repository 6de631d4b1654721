//! The store's tables and statements: the SQL text of every statement (with the
//! configured table names filled in once), and opening the connections, which creates
//! the tables and seeds the ETag counter.

use rusqlite::Connection;

use super::config::Config;
use super::writer::CLEANUP_CHUNK;
use super::{db_err, now_ms};
use crate::StateError;

/// The SQL text of every statement, with the table names filled in once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) upsert: String,
    pub(super) insert_first: String,
    pub(super) update_etag: String,
    pub(super) delete: String,
    pub(super) delete_etag: String,
    pub(super) get: String,
    pub(super) scan: String,
    pub(super) counter_get: String,
    pub(super) counter_set: String,
    pub(super) cleanup: String,
    pub(super) counter_key: String,
}

impl Sql {
    pub(super) fn new(t: &str, m: &str) -> Self {
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

/// A random starting point for a new database's ETag counter, so that ETags of a deleted
/// and re-created database file do not repeat the old ones.
pub(super) fn random_start() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.write_u32(std::process::id());
    // 2^52 at most: room for 2^62 more writes before i64 runs out.
    i64::try_from(h.finish() >> 12).unwrap_or(1)
}

/// Prepared statements each connection keeps: every statement in [`Sql`], with room.
const STATEMENTS: usize = 32;

fn open_err(e: trellis_sqlite::OpenError) -> StateError {
    StateError::Backend(e.to_string())
}

/// Opens the writing connection: journal mode, durability, schema.
pub(super) fn open_writer(cfg: &Config, sql: &Sql) -> Result<Connection, StateError> {
    let mode = if cfg.disable_wal { "DELETE" } else { "WAL" };
    let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, STATEMENTS, mode)
        .map_err(open_err)?;
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

pub(super) fn open_reader(cfg: &Config) -> Result<Connection, StateError> {
    let conn =
        trellis_sqlite::open(&cfg.connection, cfg.busy_timeout, STATEMENTS).map_err(open_err)?;
    conn.execute_batch("PRAGMA query_only = 1; PRAGMA temp_store = MEMORY;")
        .map_err(db_err)?;
    Ok(conn)
}
