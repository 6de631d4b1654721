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
//! machine that runs it once it has been read. The inline reader's size limit
//! (`InlineReads::with_size_limit`) looks at the size again at most once a second. Queries,
//! bulk gets of more than [`MAX_KEYS`] keys, and gets that find the inline connection taken
//! by another thread (a multi-threaded runtime) go to the reader threads as before.
//!
//! A read sees what was committed before it began, as a reader thread's does, so a write
//! acknowledged before a get is seen by it.

use std::sync::Arc;

use trellis_sqlite::inline::InlineReads;

use super::config::Config;
use super::now_ms;
use super::reader::get_many;
use super::schema::Sql;
use crate::{Item, StateError};

/// The most keys a bulk get reads inline: more could hold the caller's thread for a
/// while even when every page is cached.
pub(super) const MAX_KEYS: usize = 16;

/// The inline reader, limited to a small database.
#[derive(Debug)]
pub(super) struct InlineGets {
    reads: InlineReads<Arc<Sql>>,
}

impl InlineGets {
    /// `None` when inline reads are off or the database is in memory (one connection:
    /// its reads are queued with the writes).
    pub(super) fn open(cfg: &Config, sql: Arc<Sql>) -> Result<Option<Self>, StateError> {
        if cfg.inline_below == 0 {
            return Ok(None);
        }
        let reads = InlineReads::open(&cfg.connection, cfg.busy_timeout, 4, sql)
            .map_err(|e| StateError::Backend(format!("sqlite: {e}")))?;
        Ok(reads.map(|reads| InlineGets {
            reads: reads.with_size_limit(cfg.inline_below),
        }))
    }

    /// Reads `keys` here and now, or `None` when they must go to the reader threads.
    pub(super) fn get<K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Option<Result<Vec<Option<Item>>, StateError>> {
        if keys.len() > MAX_KEYS {
            return None;
        }
        self.reads
            .try_read(|conn, sql| get_many(conn, sql, keys, now_ms()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::Connection;

    use super::*;
    use crate::Metadata;

    fn config(dir: &std::path::Path, below: &str) -> Config {
        let path = dir.join("s.db");
        let md = Metadata::from_pairs([
            ("connectionString", path.to_str().unwrap()),
            ("inlineReadsBelow", below),
        ]);
        Config::from_metadata(&md).unwrap()
    }

    fn open(cfg: &Config) -> (Connection, Option<InlineGets>) {
        let sql = Arc::new(Sql::new(&cfg.table, &cfg.metadata_table));
        let writer = super::super::schema::open_writer(cfg, &sql).unwrap();
        (writer, InlineGets::open(cfg, sql).unwrap())
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
        let (writer, gets) = open(&config(dir.path(), "1Mi"));
        let gets = gets.unwrap();
        put(&writer, "k", b"v");
        let keys = ["k", "missing"];
        let items = gets.get(&keys).expect("read inline").unwrap();
        assert_eq!(items[0].as_ref().unwrap().value.as_ref(), b"v");
        assert!(items[1].is_none());
        let many: Vec<String> = (0..=MAX_KEYS).map(|i| i.to_string()).collect();
        assert!(
            gets.get(&many).is_none(),
            "too many keys for one inline read"
        );

        // A database already past the limit is read on the reader threads.
        let dir = tempfile::tempdir().unwrap();
        let (writer, gets) = open(&config(dir.path(), "64Ki"));
        put(&writer, "big", &vec![7; 128 << 10]);
        assert!(gets.unwrap().get(&keys).is_none(), "128 KiB is past 64 KiB");
    }

    #[test]
    fn zero_turns_inline_reads_off() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&config(dir.path(), "0")).1.is_none());
    }
}
