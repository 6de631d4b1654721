//! The broker's tables (see the module docs for what each holds) and opening its
//! connections, which creates them.

use rusqlite::Connection;

use super::config::Config;
use super::db_err;
use crate::PubSubError;

const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS pubsub_messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    content_type TEXT,
    metadata TEXT,
    published_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS pubsub_messages_topic ON pubsub_messages (topic, id);
CREATE INDEX IF NOT EXISTS pubsub_messages_expires ON pubsub_messages (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS pubsub_groups (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    frontier INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (topic, grp)
);
CREATE TABLE IF NOT EXISTS pubsub_inflight (
    group_id INTEGER NOT NULL,
    msg_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pubsub_meta (key TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
INSERT OR IGNORE INTO pubsub_meta (key, value) VALUES ('next_id', 1), ('signal', 0);
COMMIT;
";

/// Prepared statements each connection keeps: every statement the broker runs, with room.
const STATEMENTS: usize = 64;

fn open_err(e: trellis_sqlite::OpenError) -> PubSubError {
    PubSubError::Backend(e.to_string())
}

/// A read-only connection, for the poller.
pub(super) fn open_reader(cfg: &Config) -> Result<Connection, PubSubError> {
    let conn =
        trellis_sqlite::open(&cfg.connection, cfg.busy_timeout, STATEMENTS).map_err(open_err)?;
    conn.execute_batch("PRAGMA query_only = 1")
        .map_err(db_err)?;
    Ok(conn)
}

/// Opens the writing connection: journal mode, durability, schema.
pub(super) fn open_writer(cfg: &Config) -> Result<Connection, PubSubError> {
    let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, STATEMENTS, "WAL")
        .map_err(open_err)?;
    // In one immediate transaction, so two processes creating the file at once agree.
    if let Err(e) = conn.execute_batch(SCHEMA) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(PubSubError::Backend(format!(
            "sqlite: cannot create the pub/sub tables: {e}"
        )));
    }
    Ok(conn)
}
