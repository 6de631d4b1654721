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
//! the disk on the caller's thread; that is the trade for small, hot tables.
//!
//! A store whose data may be large (the state store) sets a size limit
//! ([`InlineReads::with_size_limit`]): [`InlineReads::try_read`] then reads only while the
//! database is at most that large, a size that stays in the page cache once read, and the
//! store reads some other way (its reader threads) past it. The size is looked at again at
//! most once a second, so a database that grows past the limit stops being read inline
//! within a second, and one that shrinks back (a clean-up, a `VACUUM`) is read inline
//! again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::open::{OpenError, in_memory, open};

/// The inline reader failed to run a read (its lock was poisoned by a panic in another
/// read). Stores turn it into their own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadFailed(pub String);

/// How often a size limit looks at the database's size again.
const SIZE_CHECK: Duration = Duration::from_secs(1);

/// A read-only connection to a store's database, used on the calling thread, with state
/// `S` its reads share (the store's SQL).
#[derive(Debug)]
pub struct InlineReads<S> {
    conn: Mutex<Reader>,
    shared: S,
    busy_timeout: Duration,
}

/// The connection, and its size limit's state (both used under the one lock).
#[derive(Debug)]
struct Reader {
    conn: Connection,
    limit: Option<SizeLimit>,
}

#[derive(Debug)]
struct SizeLimit {
    /// The largest database, in bytes, that is read inline.
    bytes: u64,
    /// Whether the database was that small when last looked at.
    within: bool,
    /// When to look again; `None` before the first look.
    next_check: Option<Instant>,
}

impl SizeLimit {
    /// Whether the database is within the limit, looking at its size again when the last
    /// look is [`SIZE_CHECK`] old.
    fn allows(&mut self, conn: &Connection, now: Instant) -> bool {
        if self.next_check.is_some_and(|next| now < next) {
            return self.within;
        }
        self.next_check = Some(now + SIZE_CHECK);
        let within = match size(conn) {
            Ok(bytes) => bytes <= self.bytes,
            Err(error) => {
                tracing::warn!(%error, "sqlite: cannot read the database size; not reading inline");
                false
            }
        };
        if within != self.within {
            tracing::debug!(within, limit = self.bytes, "sqlite: inline reads");
        }
        self.within = within;
        within
    }
}

/// The database's size in bytes, as of the last commit this connection can see.
fn size(conn: &Connection) -> rusqlite::Result<u64> {
    let mut st = conn.prepare_cached(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )?;
    let bytes: i64 = st.query_row([], |r| r.get(0))?;
    Ok(u64::try_from(bytes).unwrap_or(0))
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
            conn: Mutex::new(Reader { conn, limit: None }),
            shared,
            busy_timeout,
        }))
    }

    /// Lets [`try_read`](Self::try_read) read only while the database is at most `bytes`
    /// (see the module docs). [`read`](Self::read) has no other way to read, and ignores it.
    #[must_use]
    pub fn with_size_limit(mut self, bytes: u64) -> Self {
        self.conn.get_mut().unwrap_or_else(|p| p.into_inner()).limit = Some(SizeLimit {
            bytes,
            within: false,
            next_check: None,
        });
        self
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
        f(&conn.conn, &self.shared)
    }

    /// Runs `f` on this thread if the reader's connection is free at once and the database
    /// is within the size limit, if any; `None` otherwise (or when a read panicked holding
    /// the connection), so the caller reads some other way instead of blocking its thread
    /// on the lock or on the disk.
    pub fn try_read<T>(&self, f: impl FnOnce(&Connection, &S) -> T) -> Option<T> {
        let mut reader = self.conn.try_lock().ok()?;
        let Reader { conn, limit } = &mut *reader;
        if let Some(limit) = limit
            && !limit.allows(conn, Instant::now())
        {
            return None;
        }
        crate::set_busy_budget(self.busy_timeout);
        Some(f(conn, &self.shared))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::open_writer;

    /// A new database made by `schema` through a writer, and an inline reader of it
    /// sharing `shared`.
    fn database<S>(schema: &str, shared: S) -> (tempfile::TempDir, Connection, InlineReads<S>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let path = path.to_str().unwrap();
        let writer = open_writer(path, Duration::from_secs(1), 8, "WAL").unwrap();
        writer.execute_batch(schema).unwrap();
        let reads = InlineReads::open(path, Duration::from_secs(1), 8, shared)
            .unwrap()
            .unwrap();
        (dir, writer, reads)
    }

    #[test]
    fn reads_see_what_was_committed_and_cannot_write() {
        let (_dir, writer, reads) = database(
            "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('a');",
            "SELECT v FROM t",
        );
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
    fn a_size_limit_reads_inline_only_while_the_database_is_within_it() {
        let (_dir, writer, reads) = database("CREATE TABLE t (v BLOB)", ());
        let reads = reads.with_size_limit(1 << 20);
        assert_eq!(reads.try_read(|_, _| "inline"), Some("inline"));

        // Past the limit: seen at the next look, a second after the last one.
        writer
            .execute("INSERT INTO t VALUES (?1)", [vec![7u8; 2 << 20]])
            .unwrap();
        let allows = |at: Instant| {
            let mut reader = reads.conn.lock().unwrap();
            let Reader { conn, limit } = &mut *reader;
            limit.as_mut().unwrap().allows(conn, at)
        };
        let due = reads
            .conn
            .lock()
            .unwrap()
            .limit
            .as_ref()
            .unwrap()
            .next_check
            .unwrap();
        assert!(
            allows(due - Duration::from_millis(1)),
            "not looked at again yet"
        );
        assert!(!allows(due), "2 MiB is past 1 MiB");
        assert!(
            reads.try_read(|_, _| ()).is_none(),
            "read some other way now"
        );

        writer.execute_batch("DELETE FROM t; VACUUM").unwrap();
        assert!(allows(due + SIZE_CHECK), "shrunk back");
        assert!(
            reads
                .read(|c, _| c
                    .query_row("SELECT 1", [], |_| Ok(()))
                    .map_err(|e| ReadFailed(e.to_string())))
                .is_ok(),
            "read ignores the limit"
        );
    }

    #[test]
    fn an_in_memory_database_has_no_inline_reader() {
        let reads = InlineReads::open(":memory:", Duration::from_secs(1), 8, ()).unwrap();
        assert!(reads.is_none());
    }
}
