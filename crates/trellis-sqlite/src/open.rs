//! Opening an embedded backend's database the one way they all do: what a
//! `connectionString` names, the connection flags, waiting for other processes' locks,
//! and for the connection a writer will own, the missing directories, the journal mode
//! and the pragmas every writer wants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open sqlite database {connection:?}: {source}")]
    Open {
        connection: String,
        source: rusqlite::Error,
    },
    #[error("sqlite: cannot switch journal mode to {wanted} (it is {got})")]
    JournalMode { wanted: String, got: String },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Whether a `connectionString` names an in-memory database rather than a file: such a
/// database gets one connection (a second one would be another database), and no other
/// process can see it.
pub fn in_memory(connection: &str) -> bool {
    connection == ":memory:"
        || connection.starts_with("file::memory:")
        || connection.contains("mode=memory")
}

/// Opens `connection` (a file path, a `file:` URI, or `:memory:`), creating the file when
/// missing; the connection waits up to `busy_timeout` for other processes' locks (see
/// [`crate::wait_for_locks`]) and caches up to `statements` prepared statements.
pub fn open(
    connection: &str,
    busy_timeout: Duration,
    statements: usize,
) -> Result<Connection, OpenError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(connection, flags).map_err(|source| OpenError::Open {
            connection: connection.to_string(),
            source,
        })?;
    crate::wait_for_locks(&mut conn, busy_timeout)?;
    // Plans that do not depend on the values bound. Without this SQLite re-prepares a
    // cached statement whenever a bound value it may plan by changes (a `LIMIT ?`, among
    // others): on the workflow store that was parsing and planning again on most
    // executions, a third of its writer's time.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(statements);
    Ok(conn)
}

/// Opens the connection a writer will own (see [`open`]): first creates a file path's
/// missing directories (the runtime's default stores live in its data directory, which may
/// not exist yet), then switches a file to `journal_mode` (`WAL`, or `DELETE`), and sets
/// `synchronous=FULL` (every commit fsynced, also in WAL mode, where NORMAL would not be),
/// a 64 MiB journal size limit, and temporary tables in memory.
pub fn open_writer(
    connection: &str,
    busy_timeout: Duration,
    statements: usize,
    journal_mode: &str,
) -> Result<Connection, OpenError> {
    let memory = in_memory(connection);
    if !memory
        && !connection.starts_with("file:")
        && let Some(dir) = Path::new(connection).parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = open(connection, busy_timeout, statements)?;
    if !memory {
        let got = crate::set_journal_mode(&conn, journal_mode, busy_timeout)?;
        if !got.eq_ignore_ascii_case(journal_mode) {
            return Err(OpenError::JournalMode {
                wanted: journal_mode.to_string(),
                got,
            });
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864; \
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn in_memory_names() {
        for name in [
            ":memory:",
            "file::memory:?cache=shared",
            "file:x?mode=memory",
        ] {
            assert!(in_memory(name), "{name}");
        }
        for name in ["/x/y.db", "memory.db", "file:/x/y.db"] {
            assert!(!in_memory(name), "{name}");
        }
    }

    #[test]
    fn a_writer_creates_missing_directories_and_switches_to_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/w.db");
        let conn = open_writer(path.to_str().unwrap(), Duration::from_secs(1), 8, "WAL").unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
    }

    #[test]
    fn cached_statements_are_not_prepared_again_for_new_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let conn = open(path.to_str().unwrap(), Duration::from_secs(1), 8).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); \
             INSERT INTO t (v) VALUES ('a'), ('b'), ('c');",
        )
        .unwrap();
        for limit in [1_i64, 2, 3, 1, 2] {
            let mut st = conn
                .prepare_cached("SELECT v FROM t ORDER BY k LIMIT ?1")
                .unwrap();
            let got: Vec<String> = st
                .query_map([limit], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got.len() as i64, limit);
            assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
        }
    }

    #[test]
    fn errors_name_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a directory should be.
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let path = file.join("sub/w.db");
        let err = open_writer(path.to_str().unwrap(), Duration::from_secs(1), 8, "WAL")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot create "), "{err}");
        let err = open(dir.path().to_str().unwrap(), Duration::from_secs(1), 8)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot open sqlite database "), "{err}");
    }
}
