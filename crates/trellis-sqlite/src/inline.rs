//! Reads on the caller's own thread, for stores whose reads touch a few pages of a small
//! file (a secret, a configuration item). Such a read takes microseconds; handing it to
//! another thread and being woken with the answer costs two thread wake-ups, each tens of
//! microseconds when it lands on an idle core of a VM, and was most of what a secret get
//! through a sidecar cost (docs/benchmarks.md, "The floor of an HTTP hop"). Writes still
//! go through the group-commit writer ([`crate::writer`]).
//!
//! The connection is `query_only`. A read sees every transaction committed before it
//! starts, so a write that was acknowledged (answered after its commit) is seen by every
//! read that starts after the acknowledgment. A read that misses the page cache waits for
//! the disk on the caller's thread; that is the trade for small, hot tables, and why the
//! state store, whose data may be large, reads this way only while its database is small.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::Connection;

use crate::open::{OpenError, in_memory, open};

/// The inline reader failed to run a read (its lock was poisoned by a panic in another
/// read). Stores turn it into their own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadFailed(pub String);

/// A read-only connection to a store's database, used on the calling thread, with state
/// `S` its reads share (the store's SQL).
#[derive(Debug)]
pub struct InlineReads<S> {
    conn: Mutex<Connection>,
    shared: S,
    busy_timeout: Duration,
}

impl<S> InlineReads<S> {
    /// Opens a read-only connection to `connection` (which must exist, with its tables);
    /// `None` for an in-memory database, where another connection would be another
    /// database: its store reads through the writer instead.
    pub fn open(
        connection: &str,
        busy_timeout: Duration,
        statements: usize,
        shared: S,
    ) -> Result<Option<Self>, OpenError> {
        if in_memory(connection) {
            return Ok(None);
        }
        let conn = open(connection, busy_timeout, statements)?;
        conn.execute_batch("PRAGMA query_only = 1")?;
        Ok(Some(InlineReads {
            conn: Mutex::new(conn),
            shared,
            busy_timeout,
        }))
    }

    /// Runs `f` on this thread, on the reader's connection.
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection, &S) -> Result<T, E>) -> Result<T, E>
    where
        E: From<ReadFailed>,
    {
        let conn = self
            .conn
            .lock()
            .map_err(|_| E::from(ReadFailed("sqlite reader lock poisoned".into())))?;
        // The busy handler's budget is per thread, and this runs on the caller's.
        crate::set_busy_budget(self.busy_timeout);
        f(&conn, &self.shared)
    }

    /// Runs `f` on this thread if the reader's connection is free at once; `None` when
    /// another thread holds it (or a read panicked holding it), so the caller can read some
    /// other way instead of blocking its thread on the lock.
    pub fn try_read<T>(&self, f: impl FnOnce(&Connection, &S) -> T) -> Option<T> {
        let conn = self.conn.try_lock().ok()?;
        crate::set_busy_budget(self.busy_timeout);
        Some(f(&conn, &self.shared))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::open_writer;

    #[test]
    fn reads_see_what_was_committed_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let path = path.to_str().unwrap();
        let writer = open_writer(path, Duration::from_secs(1), 8, "WAL").unwrap();
        writer
            .execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a');")
            .unwrap();
        let reads = InlineReads::open(path, Duration::from_secs(1), 8, "SELECT v FROM t")
            .unwrap()
            .unwrap();
        let read = |reads: &InlineReads<&str>| {
            reads
                .read(|c, sql| {
                    let fail = |e: rusqlite::Error| ReadFailed(e.to_string());
                    let mut st = c.prepare_cached(sql).map_err(fail)?;
                    st.query_map([], |r| r.get::<_, String>(0))
                        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                        .map_err(fail)
                })
                .unwrap()
        };
        assert_eq!(read(&reads), ["a"]);
        writer.execute("INSERT INTO t VALUES ('b')", []).unwrap();
        assert_eq!(
            read(&reads),
            ["a", "b"],
            "a committed write is seen at once"
        );
        let write = reads.read(|c, _| {
            c.execute("INSERT INTO t VALUES ('c')", [])
                .map_err(|e| ReadFailed(e.to_string()))
        });
        assert!(write.is_err(), "the reader is query_only");
        let held = reads.conn.lock().unwrap();
        assert!(
            reads.try_read(|_, _| ()).is_none(),
            "a busy connection is not waited for"
        );
        drop(held);
        assert_eq!(reads.try_read(|_, sql| sql.len()), Some(15));
    }

    #[test]
    fn an_in_memory_database_has_no_inline_reader() {
        let reads = InlineReads::open(":memory:", Duration::from_secs(1), 8, ()).unwrap();
        assert!(reads.is_none());
    }
}
