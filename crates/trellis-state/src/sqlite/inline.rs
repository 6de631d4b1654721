//! Gets on the caller's thread while the database is small.
//!
//! A get handed to a reader thread costs two thread wake-ups (the reader's, then the
//! caller's with the answer). On a VM each is tens of microseconds when it lands on an
//! idle core, several times what the read itself costs when its pages are in the page
//! cache. The secret and configuration stores read inline for that reason
//! (`trellis_sqlite::inline`). A read that misses the page cache, though, waits for the
//! disk on the caller's thread, and a sidecar serves every request from one thread.
//!
//! So a get reads inline only while the database is no larger than `inlineReadsBelow`
//! (64 MiB by default; `0` turns it off): a file that size stays in the page cache of any
//! machine that runs it once it has been read. The size is read again at most once a
//! second, so a database that grows past the line goes back to the reader threads within
//! a second, and comes back inline if it shrinks (a clean-up, a `VACUUM`). Queries, bulk
//! gets of more than [`MAX_KEYS`] keys, and gets that find the inline connection taken by
//! another thread (a multi-threaded runtime) go to the reader threads as before.
//!
//! A read sees what was committed before it began, as a reader thread's does, so a write
//! acknowledged before a get is seen by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use rusqlite::Connection;
use trellis_sqlite::inline::InlineReads;

use super::config::Config;
use super::reader::get_many;
use super::schema::Sql;
use super::{db_err, now_ms};
use crate::{Item, StateError};

/// The most keys a bulk get reads inline: more could hold the caller's thread for a
/// while even when every page is cached.
pub(super) const MAX_KEYS: usize = 16;
/// How often the database's size is read again.
const SIZE_CHECK_MS: i64 = 1000;

/// The inline reader and the size rule.
#[derive(Debug)]
pub(super) struct InlineGets {
    reads: InlineReads<Guard>,
}

#[derive(Debug)]
struct Guard {
    sql: Arc<Sql>,
    /// The largest database, in bytes, that is read inline.
    below: u64,
    /// Whether the database was that small when last looked at.
    small: AtomicBool,
    /// When to look again (ms since the epoch).
    next_check: AtomicI64,
}

impl InlineGets {
    /// `None` when inline reads are off or the database is in memory (one connection:
    /// its reads are queued with the writes).
    pub(super) fn open(cfg: &Config, sql: Arc<Sql>) -> Result<Option<Self>, StateError> {
        if cfg.inline_below == 0 {
            return Ok(None);
        }
        let guard = Guard {
            sql,
            below: cfg.inline_below,
            small: AtomicBool::new(false),
            next_check: AtomicI64::new(i64::MIN),
        };
        let reads = InlineReads::open(&cfg.connection, cfg.busy_timeout, 4, guard)
            .map_err(|e| StateError::Backend(format!("sqlite: {e}")))?;
        Ok(reads.map(|reads| InlineGets { reads }))
    }

    /// Reads `keys` here and now, or `None` when they must go to the reader threads.
    pub(super) fn get(&self, keys: &[String]) -> Option<Result<Vec<Option<Item>>, StateError>> {
        if keys.len() > MAX_KEYS {
            return None;
        }
        self.reads
            .try_read(|conn, guard| {
                let now = now_ms();
                guard
                    .small(conn, now)
                    .then(|| get_many(conn, &guard.sql, keys, now))
            })
            .flatten()
    }
}

impl Guard {
    /// Whether the database is small enough to read inline, looking at its size again when
    /// the last look is more than [`SIZE_CHECK_MS`] old.
    fn small(&self, conn: &Connection, now: i64) -> bool {
        if now < self.next_check.load(Ordering::Relaxed) {
            return self.small.load(Ordering::Relaxed);
        }
        self.next_check
            .store(now.saturating_add(SIZE_CHECK_MS), Ordering::Relaxed);
        let small = match size(conn) {
            Ok(bytes) => bytes <= self.below,
            Err(error) => {
                tracing::warn!(%error, "sqlite state store: cannot read the database size; reading on reader threads");
                false
            }
        };
        if small != self.small.swap(small, Ordering::Relaxed) {
            tracing::debug!(small, below = self.below, "sqlite state store: inline gets");
        }
        small
    }
}

/// The database's size in bytes, as of the last commit this connection can see.
fn size(conn: &Connection) -> Result<u64, StateError> {
    let mut st = conn
        .prepare_cached(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .map_err(db_err)?;
    let bytes: i64 = st.query_row([], |r| r.get(0)).map_err(db_err)?;
    Ok(u64::try_from(bytes).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Metadata;

    fn open(dir: &std::path::Path, below: &str) -> (Connection, InlineGets) {
        let path = dir.join("s.db");
        let md = Metadata::from_pairs([
            ("connectionString", path.to_str().unwrap()),
            ("inlineReadsBelow", below),
        ]);
        let cfg = Config::from_metadata(&md).unwrap();
        let sql = Arc::new(Sql::new(&cfg.table, &cfg.metadata_table));
        let writer = super::super::schema::open_writer(&cfg, &sql).unwrap();
        (writer, InlineGets::open(&cfg, sql).unwrap().unwrap())
    }

    fn put(writer: &Connection, key: &str, value: &[u8]) {
        writer
            .execute(
                "INSERT INTO state (key, value, is_json, etag) VALUES (?1, ?2, 0, 1)",
                rusqlite::params![key, value],
            )
            .unwrap();
    }

    #[test]
    fn a_small_database_is_read_inline_and_a_large_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, gets) = open(dir.path(), "1Mi");
        put(&writer, "k", b"v");
        let keys = ["k".to_string(), "missing".to_string()];
        let items = gets.get(&keys).expect("read inline").unwrap();
        assert_eq!(items[0].as_ref().unwrap().value.as_ref(), b"v");
        assert!(items[1].is_none());
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| i.to_string()).collect();
        assert!(
            gets.get(&many).is_none(),
            "too many keys for one inline read"
        );

        // Past the line: the size is looked at again only after a second.
        put(&writer, "big", &vec![7; 2 << 20]);
        let guard = &gets.reads;
        let due = guard
            .try_read(|_, g| g.next_check.load(Ordering::Relaxed))
            .unwrap();
        guard.try_read(|c, g| assert!(g.small(c, due - 1), "not looked at again yet"));
        let later = due + 1;
        guard.try_read(|c, g| assert!(!g.small(c, later), "2 MiB is past 1 MiB"));
        assert!(gets.get(&keys).is_none(), "the reader threads read it now");

        writer.execute("DELETE FROM state", []).unwrap();
        writer.execute_batch("VACUUM").unwrap();
        let much_later = later + SIZE_CHECK_MS + 1;
        guard.try_read(|c, g| assert!(g.small(c, much_later), "shrunk back"));
    }

    #[test]
    fn zero_turns_inline_reads_off() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata::from_pairs([
            (
                "connectionString",
                dir.path().join("s.db").to_str().unwrap(),
            ),
            ("inlineReadsBelow", "0"),
        ]);
        let cfg = Config::from_metadata(&md).unwrap();
        let sql = Arc::new(Sql::new(&cfg.table, &cfg.metadata_table));
        assert!(InlineGets::open(&cfg, sql).unwrap().is_none());
    }
}
